//! A command's answer, sent when the batch carrying its change commits: an
//! operator's 200 means the acknowledgement (or shelve, or service change)
//! is durable. It rides in the batch as one more `Ack`.

use crate::alarm::{Alarm, CommandError};
use tokio::sync::oneshot;

pub(super) struct ReplyOnCommit(
    Option<(
        oneshot::Sender<Result<Alarm, CommandError>>,
        Result<Alarm, CommandError>,
    )>,
);

impl ReplyOnCommit {
    pub(super) fn new(reply: oneshot::Sender<Result<Alarm, CommandError>>, res: Result<Alarm, CommandError>) -> Self {
        Self(Some((reply, res)))
    }
}

impl crate::store::Ack for ReplyOnCommit {
    fn ack(mut self: Box<Self>) {
        if let Some((reply, res)) = self.0.take() {
            // The requester may have gone (HTTP client hung up); the change stands.
            let _ = reply.send(res);
        }
    }
}
