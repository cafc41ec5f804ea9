//! What the criterion benches share.

use std::time::Duration;

use criterion::Criterion;

/// Keeps the whole bench set within a few minutes on a 2-core machine;
/// `configure_from_args` lets a command line override it.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50)
        .configure_from_args()
}
