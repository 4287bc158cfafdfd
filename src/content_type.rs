//! The content types of the responses this crate writes, and the one place they are set.
//!
//! Every response the crate answers itself (problem details, health, `/metrics`) carries
//! `X-Content-Type-Options: nosniff`, so that no browser reads an error body or a metrics page
//! as HTML or script, and text types name their charset for the same reason.

use axum::response::Response;
use http::{HeaderValue, header};

/// Plain text: health answers.
pub(crate) const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// RFC 9457 problem details: every refusal and error this crate answers with.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";
/// The IETF health-check draft's format.
pub(crate) const HEALTH_JSON: &str = "application/health+json";
/// Prometheus' text exposition format.
#[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `response` with `content_type` and `X-Content-Type-Options: nosniff`.
pub(crate) fn typed(mut response: Response, content_type: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
