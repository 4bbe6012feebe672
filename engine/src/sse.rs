//! Server-sent event streams: writing one (the MCP gateway's streams, `GET /v1/runs/{id}/events`)
//! and reading one (the MCP gateway's upstream client, `cogward run events --follow`), where
//! events are taken one by one out of what has been read so far.

/// One event of a stream.
#[derive(Debug, Default, PartialEq)]
pub struct Event {
    /// Its `event:` name, if it has one.
    pub event: Option<String>,
    /// Its `id:` (the last one given).
    pub id: Option<String>,
    /// Its `data:` lines joined by newlines; `None` when it has none.
    pub data: Option<String>,
}

/// Take the next complete event (ended by a blank line) out of `buf`; `None` until one is there.
pub fn take_event(buf: &mut String) -> Option<Event> {
    let end = buf.find("\n\n")?;
    let frame: String = buf.drain(..end + 2).collect();
    let mut event = Event::default();
    let mut data: Vec<&str> = Vec::new();
    for line in frame.lines() {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" if event.event.is_none() => event.event = Some(value.to_string()),
            "id" => event.id = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    event.data = (!data.is_empty()).then(|| data.join("\n"));
    Some(event)
}

/// An SSE response whose events come from `rx` as they are sent.
pub fn event_stream(
    rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, std::io::Error>>,
) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = axum::response::Response::new(axum::body::Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_are_taken_whole_and_in_order() {
        let mut buf = String::from(
            ": a comment\n\nid: 7\nevent: message\ndata: {\"a\":\ndata: 1}\n\nid: 8\ndata:",
        );
        assert_eq!(take_event(&mut buf), Some(Event::default()));
        let e = take_event(&mut buf).unwrap();
        assert_eq!(
            e,
            Event {
                event: Some("message".into()),
                id: Some("7".into()),
                data: Some("{\"a\":\n1}".into()),
            }
        );
        // The last event is not complete yet.
        assert_eq!(take_event(&mut buf), None);
        buf.push_str("\n\n");
        let e = take_event(&mut buf).unwrap();
        assert_eq!((e.id.as_deref(), e.data.as_deref()), (Some("8"), Some("")));
        assert!(buf.is_empty());
    }
}
