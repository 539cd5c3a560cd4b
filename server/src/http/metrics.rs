//! `/metrics` in Prometheus' text format: request counts by status class and handling time,
//! and the generation figures, which live in the serving state and survive hot-swaps.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::http::state::AppState;

pub(crate) async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    state.requests.by_class[class].fetch_add(1, Ordering::Relaxed);
    state
        .requests
        .micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    response
}

/// Prometheus text format.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let generator = state.generator();
    let g = &generator.metrics;
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE kefu_http_requests_total counter");
    for (i, counter) in state.requests.by_class.iter().enumerate() {
        let _ = writeln!(
            out,
            "kefu_http_requests_total{{status=\"{}xx\"}} {}",
            i + 1,
            counter.load(Relaxed)
        );
    }
    let total: u64 = state
        .requests
        .by_class
        .iter()
        .map(|c| c.load(Relaxed))
        .sum();
    let _ = writeln!(out, "# TYPE kefu_http_request_duration_seconds summary");
    let _ = writeln!(
        out,
        "kefu_http_request_duration_seconds_sum {}",
        state.requests.micros.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "kefu_http_request_duration_seconds_count {total}");
    let generations = g.generations.load(Relaxed);
    let _ = writeln!(out, "# TYPE kefu_time_to_first_token_seconds summary");
    let _ = writeln!(
        out,
        "kefu_time_to_first_token_seconds_sum {}",
        g.first_token_ms.load(Relaxed) as f64 / 1e3
    );
    let _ = writeln!(out, "kefu_time_to_first_token_seconds_count {generations}");
    // Tokens generated; prompt tokens the model ran, and those the prefix cache supplied.
    for (name, value) in [
        ("kefu_generated_tokens_total", &g.generated_tokens),
        ("kefu_prefill_tokens_total", &g.prefilled_tokens),
        ("kefu_prefix_cache_tokens_total", &g.cached_tokens),
    ] {
        let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", value.load(Relaxed));
    }
    let _ = writeln!(out, "# TYPE kefu_generation_seconds_total counter");
    let _ = writeln!(
        out,
        "kefu_generation_seconds_total {}",
        g.generation_ms.load(Relaxed) as f64 / 1e3
    );
    let _ = writeln!(out, "# TYPE kefu_generations_total counter");
    let _ = writeln!(
        out,
        "kefu_generations_total{{outcome=\"done\"}} {generations}"
    );
    let _ = writeln!(
        out,
        "kefu_generations_total{{outcome=\"failed\"}} {}",
        g.failed.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "kefu_generations_total{{outcome=\"rejected\"}} {}",
        g.rejected.load(Relaxed)
    );
    let _ = writeln!(out, "# TYPE kefu_generation_queue_depth gauge");
    let _ = writeln!(
        out,
        "kefu_generation_queue_depth {}",
        generator.queue_depth()
    );
    let _ = writeln!(out, "# TYPE kefu_model_swaps_total counter");
    let _ = writeln!(
        out,
        "kefu_model_swaps_total {}",
        state.serving.swaps.load(Relaxed)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
