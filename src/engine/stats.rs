//! Statistics for rules that ask for confidence: Wilson score bounds on a binomial rate.

use statrs::distribution::{ContinuousCDF, Normal};

/// The one-sided z score for a confidence level such as 0.95.
pub fn z_for(confidence: f64) -> f64 {
    let normal = Normal::new(0.0, 1.0).expect("the standard normal is valid");
    normal.inverse_cdf(confidence)
}

/// The Wilson score interval `(lower, upper)` for `errors` out of `n` at score `z`.
pub fn wilson(errors: f64, n: f64, z: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let p = (errors / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = p + z2 / (2.0 * n);
    let margin = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    (((centre - margin) / denom).max(0.0), ((centre + margin) / denom).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_matches_the_normal_table() {
        assert!((z_for(0.95) - 1.6449).abs() < 1e-3);
        assert!((z_for(0.99) - 2.3263).abs() < 1e-3);
    }

    #[test]
    fn wilson_bounds_match_published_values() {
        // 1 error out of 3 requests at 95% (one-sided): the lower bound is far below 5%.
        let (lo, hi) = wilson(1.0, 3.0, z_for(0.95));
        assert!(lo < 0.05, "lower {lo}");
        assert!(hi > 0.7, "upper {hi}");
        // 80 of 1000: the interval is tight around 8%.
        let (lo, hi) = wilson(80.0, 1000.0, 1.96);
        assert!((lo - 0.0647).abs() < 1e-3, "lower {lo}");
        assert!((hi - 0.0986).abs() < 1e-3, "upper {hi}");
    }

    #[test]
    fn wilson_handles_edges() {
        assert_eq!(wilson(0.0, 0.0, 1.96), (0.0, 1.0));
        let (lo, _) = wilson(0.0, 100.0, 1.96);
        assert_eq!(lo, 0.0);
        let (_, hi) = wilson(100.0, 100.0, 1.96);
        assert!((hi - 1.0).abs() < 1e-12);
    }
}
