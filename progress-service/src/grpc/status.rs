//! Every error crossing the gRPC boundary is mapped here, once.

use mangahub_proto::INVALID_FIELD_TRAILER;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::changelog::LogError;
use crate::domain::ValidationError;
use crate::store::StoreError;

/// `INVALID_ARGUMENT` naming the field, in the message and in a trailer.
/// (A function, not `From`: both types are other crates'.)
pub fn invalid(err: ValidationError) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(INVALID_FIELD_TRAILER, MetadataValue::from_static(err.field));
    Status::with_metadata(Code::InvalidArgument, err.to_string(), metadata)
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "storage unavailable");
                Status::unavailable("storage unavailable, retry later")
            }
            StoreError::Internal(msg) => {
                tracing::error!(error = %msg, "storage error");
                Status::internal("internal storage error")
            }
        }
    }
}

impl From<LogError> for Status {
    fn from(err: LogError) -> Self {
        match err {
            LogError::Expired => Status::out_of_range(format!("after: {err}")),
            LogError::Store(err) => err.into(),
        }
    }
}
