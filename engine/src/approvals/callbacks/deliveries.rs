//! `callback_deliveries` (migration 0011), the replay cache: each delivery taken once, ever; in
//! flight until its decision is made (then a redelivery is a replay), given back if it could
//! not be made (then a redelivery is taken), taken over once its engine has plainly died.

use super::{Refused, refused};
use crate::http::AppState;
use axum::http::StatusCode;

/// How long a delivery may be in flight before it counts as abandoned (its engine died).
const IN_FLIGHT_LEASE: chrono::Duration = chrono::Duration::seconds(30);

/// Take over an abandoned in-flight delivery; whether this call did.
async fn reclaim(state: &AppState, channel: &str, delivery: &str) -> bool {
    let now = chrono::Utc::now();
    let cutoff = (now - IN_FLIGHT_LEASE).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    sqlx::query(
        "UPDATE callback_deliveries SET received_at = $1 WHERE channel = $2 AND delivery_id = $3 \
         AND decided = 0 AND received_at < $4",
    )
    .bind(now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    .bind(channel)
    .bind(delivery)
    .bind(cutoff)
    .execute(&state.db.pool)
    .await
    .is_ok_and(|r| r.rows_affected() == 1)
}

/// Take a delivery once: a second time is a replay once its decision is made, and asked to come
/// again while it is in flight (unless abandoned).
pub(super) async fn take_once(
    state: &AppState,
    channel: &str,
    delivery: &str,
) -> Result<(), Refused> {
    let inserted = sqlx::query(
        "INSERT INTO callback_deliveries (channel, delivery_id, received_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(channel)
    .bind(delivery)
    .bind(crate::now_rfc3339())
    .execute(&state.db.pool)
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "recording a callback delivery");
        refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the delivery could not be recorded; nothing was decided",
        )
    })?;
    if inserted.rows_affected() == 0 {
        let decided: Option<i64> = sqlx::query_scalar(
            "SELECT decided FROM callback_deliveries WHERE channel = $1 AND delivery_id = $2",
        )
        .bind(channel)
        .bind(delivery)
        .fetch_optional(&state.db.pool)
        .await
        .unwrap_or(Some(1));
        // Taken and in flight for longer than any decision takes: the engine that took it died
        // before settling it (perhaps before signalling). Take it again: if its vote did reach
        // the approval, the approval refuses it as that approver's second.
        if decided == Some(0) && reclaim(state, channel, delivery).await {
            return Ok(());
        }
        // Taken and still in flight (its decision may yet fail and give it back): come again.
        if decided == Some(0) {
            return Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "still_deciding",
                "this delivery's decision is in flight; redeliver later",
            ));
        }
        return Err(refused(
            StatusCode::CONFLICT,
            "replayed",
            "this delivery was already taken",
        ));
    }
    Ok(())
}

/// The delivery's decision is made (or refused for good): a redelivery is a replay now.
pub(super) async fn settle(state: &AppState, channel: &str, delivery: &str) {
    let settled = sqlx::query(
        "UPDATE callback_deliveries SET decided = 1 WHERE channel = $1 AND delivery_id = $2",
    )
    .bind(channel)
    .bind(delivery)
    .execute(&state.db.pool)
    .await;
    if let Err(e) = settled {
        tracing::error!(error = %e, "settling a callback delivery");
    }
}

/// Forget a delivery whose decision failed, so that its retry is taken.
pub(super) async fn give_back(state: &AppState, channel: &str, delivery: &str) {
    let forgotten =
        sqlx::query("DELETE FROM callback_deliveries WHERE channel = $1 AND delivery_id = $2")
            .bind(channel)
            .bind(delivery)
            .execute(&state.db.pool)
            .await;
    if let Err(e) = forgotten {
        tracing::error!(error = %e, "forgetting a callback delivery whose decision failed");
    }
}
