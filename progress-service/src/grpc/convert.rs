//! Wire messages ⇄ domain values, with validation naming the field at fault.

use chrono::{DateTime, Utc};
use mangahub_proto::v1 as pb;

use crate::changelog::LogCursor;
use crate::domain::{self, ProgressKey, UpdateCommand, ValidationError};
use crate::events::{Change, ChangeEvent};

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn from_timestamp(
    field: &'static str,
    t: &prost_types::Timestamp,
) -> Result<DateTime<Utc>, ValidationError> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| ValidationError::new(field, "not a valid timestamp"))
}

pub fn progress(p: &domain::Progress) -> pb::Progress {
    pb::Progress {
        user_id: p.key.user_id.clone(),
        manga_id: p.key.manga_id,
        chapter: p.chapter.to_string(),
        page: p.page,
        status: p.status.as_str().to_owned(),
        version: p.version,
        updated_at: Some(timestamp(p.updated_at)),
        device: p.device.clone(),
    }
}

pub fn update_command(req: &pb::UpdateProgressRequest) -> Result<UpdateCommand, ValidationError> {
    let key = ProgressKey::new(req.user_id.clone(), req.manga_id)?;
    if req.chapter.is_empty() {
        return Err(ValidationError::new("chapter", "is required"));
    }
    Ok(UpdateCommand {
        key,
        chapter: req.chapter.parse()?,
        page: domain::validate_page(i64::from(req.page))?,
        status: req.status.as_deref().map(str::parse).transpose()?,
        force: req.force,
        device: req
            .device
            .as_ref()
            .map(|d| domain::validate_device(d).map(|()| d.clone()))
            .transpose()?,
    })
}

/// The event as sent, with its position as a cursor of log `epoch`.
pub fn event(ev: &ChangeEvent, epoch: &str) -> pb::ProgressEvent {
    let (kind, progress) = match &ev.change {
        Change::Updated(p) => (pb::EventKind::Updated, progress(p)),
        Change::Deleted(key) => (
            pb::EventKind::Deleted,
            pb::Progress {
                user_id: key.user_id.clone(),
                manga_id: key.manga_id,
                ..Default::default()
            },
        ),
    };
    pb::ProgressEvent {
        kind: kind.into(),
        progress: Some(progress),
        origin: ev.meta.origin.clone(),
        private: ev.meta.private,
        cursor: cursor(epoch, ev.position),
    }
}

pub fn cursor(epoch: &str, position: i64) -> String {
    LogCursor::at(epoch, position).encode()
}
