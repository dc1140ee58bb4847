//! `GET /api/v1/events`: server-sent events. The stream opens with a `snapshot`
//! of the open alarms, then one `alarm` event per transition. A client that
//! falls behind the broadcast buffer gets a `resync` event (and should fetch
//! `/api/v1/alarms` again) instead of silently missing transitions. Streams are
//! admitted by [`super::streams`]: capped in all and per caller.

use super::streams::Refused;
use super::{AppState, Caller};
use crate::config::Role;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use std::convert::Infallible;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

pub async fn events(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, super::ApiError> {
    caller.require(Role::Viewer)?;
    let permit = st
        .streams
        .admit(&format!("{}:{}", caller.via, caller.name))
        .map_err(|r| match r {
            Refused::CallerFull => super::ApiError::TooMany(5),
            Refused::Full => super::ApiError::Unavailable("too many event streams open; try again later".into()),
        })?;
    // Subscribed before the snapshot is taken, so nothing committed between
    // the two is missed (a transition may show in both; the board keys by id).
    let rx = st.pipeline.commits();
    let snapshot = super::routes::sorted(st.pipeline.open_alarms());
    let first = Event::default()
        .event("snapshot")
        .json_data(&snapshot)
        .unwrap_or_else(|_| Event::default().event("resync"));
    let metrics = st.metrics.clone();
    let live = BroadcastStream::new(rx).flat_map(move |r| {
        // The stream owns its place; it is given back when the stream is dropped.
        let _held = &permit;
        let events: Vec<Result<Event, Infallible>> = match r {
            Ok(c) => c
                .transitions
                .iter()
                .map(|t| {
                    Ok(Event::default()
                        .event("alarm")
                        .json_data(serde_json::json!({
                            "action": t.action, "from": t.from, "to": t.to, "at": t.at, "who": t.who, "why": t.why,
                            "notify": t.notify, "alarm": t.alarm,
                        }))
                        .unwrap_or_else(|_| Event::default().event("resync")))
                })
                .collect(),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                metrics.sse_lagged.inc();
                vec![Ok(Event::default().event("resync").data(n.to_string()))]
            }
        };
        stream::iter(events)
    });
    // The stream ends when the service shuts down, so browsers see the
    // connection drop (and show "disconnected") instead of a silent stream.
    let shutdown = st.shutdown.clone().cancelled_owned();
    Ok(
        Sse::new(stream::once(async move { Ok(first) }).chain(live).take_until(shutdown))
            .keep_alive(KeepAlive::default()),
    )
}
