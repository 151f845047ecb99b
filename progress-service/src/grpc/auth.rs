//! Optional `SERVICE_TOKEN` check for `ProgressService` calls.

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::config::Secret;

#[derive(Clone)]
pub struct ServiceTokenCheck {
    expected: Option<Vec<u8>>,
}

impl ServiceTokenCheck {
    pub fn new(token: Option<&Secret>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {}", t.expose()).into_bytes()),
        }
    }
}

impl Interceptor for ServiceTokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, expected) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("missing or wrong service token"))
        }
    }
}

/// Compares without an early exit, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(check: &mut ServiceTokenCheck, header: Option<&str>) -> Result<(), Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().expect("ascii"));
        }
        check.call(req).map(|_| ())
    }

    #[test]
    fn open_when_unset() {
        assert!(call(&mut ServiceTokenCheck::new(None), None).is_ok());
    }

    #[test]
    fn requires_exact_bearer_token() {
        let mut check = ServiceTokenCheck::new(Some(&Secret::new("s3cret")));
        assert!(call(&mut check, Some("Bearer s3cret")).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
        ] {
            let err = call(&mut check, bad).expect_err("rejected");
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
        }
    }
}
