-- Every Slack or Jira callback delivery taken (Slack's signature, Jira's webhook identifier):
-- a second delivery of the same is a replay, refused once the first is decided (`decided` 1),
-- and asked to come again while the first is in flight. A delivery whose decision could not be
-- made is deleted, so that its redelivery is taken.
CREATE TABLE callback_deliveries (
    channel TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    decided INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, delivery_id)
);
