-- Every Slack or Jira callback delivery taken (Slack's signature, Jira's webhook identifier):
-- a second delivery of the same is a replay, refused.
CREATE TABLE callback_deliveries (
    channel TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (channel, delivery_id)
);
