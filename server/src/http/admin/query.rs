//! The query helpers the admin routes share: paging, known parameters, choices.

use std::collections::HashMap;

use crate::http::error::ApiError;

/// The most items one page lists, and one review may decide.
pub(crate) const MAX_PAGE: usize = 500;

pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_filter", message)
}

/// `offset` and `limit` (1 to [`MAX_PAGE`], 50 unless given) from a query.
pub(crate) fn paging(query: &HashMap<String, String>) -> Result<(usize, usize), ApiError> {
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| invalid(format!("{name} is a whole number, not `{text}`"))),
        }
    };
    let offset = number("offset", 0)?;
    let limit = number("limit", 50)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(format!(
            "limit is from 1 to {MAX_PAGE}, not {limit}"
        )));
    }
    Ok((offset, limit))
}

/// The query's keys must all be `known`.
pub(crate) fn only(query: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(invalid(format!(
            "unknown parameter `{key}`; this route takes {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// One of `allowed`, or none.
pub(crate) fn choice(
    query: &HashMap<String, String>,
    name: &str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("") | Some("all") => Ok(None),
        Some(v) if allowed.contains(&v) => Ok(Some(v.to_string())),
        Some(v) => Err(invalid(format!(
            "{name} is {} or all, not `{v}`",
            allowed.join(", ")
        ))),
    }
}
