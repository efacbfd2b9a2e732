//! Statistics for rules that ask for confidence: exact (Clopper-Pearson) one-sided bounds
//! on a binomial rate.
//!
//! The bounds are exact rather than a normal approximation such as Wilson's because the
//! samples that need a guard are the small ones, where approximations fail: the Wilson
//! 95% lower bound for 1 error in 3 requests is 7.8%, so "> 5% with 95% confidence"
//! would fire on a single error; the exact bound is 1.7%.

use statrs::function::beta::{beta_reg, inv_beta_reg};

/// One-sided bounds `(lower, upper)` on the true rate of `errors` out of `n` at
/// `confidence` (0.95): the true rate is below `lower` (or above `upper`) with
/// probability at most `1 - confidence`. Counts may be fractional (a rate times a
/// window); errors are clamped to `0..=n`, and `n <= 0` gives `(0, 1)`.
pub fn binomial_bounds(errors: f64, n: f64, confidence: f64) -> (f64, f64) {
    if n.is_nan() || n <= 0.0 {
        return (0.0, 1.0);
    }
    let x = if errors.is_nan() {
        0.0
    } else {
        errors.clamp(0.0, n)
    };
    let alpha = 1.0 - confidence;
    // The quantiles of Beta(x, n - x + 1) and Beta(x + 1, n - x) (Clopper and Pearson).
    let lower = if x > 0.0 {
        inv_beta_reg(x, n - x + 1.0, alpha)
    } else {
        0.0
    };
    let upper = if x < n {
        inv_beta_reg(x + 1.0, n - x, confidence)
    } else {
        1.0
    };
    (lower, upper)
}

/// Whether the one-sided bound of [`binomial_bounds`] on the far side is past
/// `threshold`: the lower bound above it when `above`, else the upper bound below it.
/// The same answer as computing the bound, from one incomplete beta function instead of
/// an inversion (several times cheaper), because the bound solves `I_bound = alpha` and
/// `I` grows with its argument. A bound exactly at the threshold counts as not past.
pub fn bound_is_past(errors: f64, n: f64, threshold: f64, confidence: f64, above: bool) -> bool {
    if n.is_nan() || n <= 0.0 {
        return false;
    }
    let x = if errors.is_nan() {
        0.0
    } else {
        errors.clamp(0.0, n)
    };
    let t = threshold.clamp(0.0, 1.0);
    if above {
        // P(X >= x | n, t) < alpha.
        x > 0.0 && beta_reg(x, n - x + 1.0, t) < 1.0 - confidence
    } else {
        // P(X <= x | n, t) < alpha.
        x < n && beta_reg(x + 1.0, n - x, t) > confidence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn bounds_match_the_closed_forms_at_the_edges() {
        // One error: the lower bound solves 1 - (1 - p)^n = alpha.
        for n in [1.0, 3.0, 20.0, 1000.0] {
            let (lo, _) = binomial_bounds(1.0, n, 0.95);
            assert!(close(lo, 1.0 - 0.95f64.powf(1.0 / n)), "n {n}: lower {lo}");
        }
        // No error: the upper bound solves (1 - p)^n = alpha.
        let (lo, hi) = binomial_bounds(0.0, 3.0, 0.95);
        assert_eq!(lo, 0.0);
        assert!(close(hi, 1.0 - 0.05f64.powf(1.0 / 3.0)), "upper {hi}");
        // All errors: the lower bound solves p^n = alpha.
        let (lo, hi) = binomial_bounds(3.0, 3.0, 0.95);
        assert!(close(lo, 0.05f64.powf(1.0 / 3.0)), "lower {lo}");
        assert_eq!(hi, 1.0);
    }

    #[test]
    fn one_error_in_three_requests_is_far_from_sure_to_exceed_five_percent() {
        let (lo, hi) = binomial_bounds(1.0, 3.0, 0.95);
        assert!(lo < 0.02, "lower {lo}");
        assert!(hi > 0.7, "upper {hi}");
    }

    #[test]
    fn large_samples_give_tight_bounds() {
        // 80 of 1000 at 95% one-sided (the 90% two-sided Clopper-Pearson interval).
        let (lo, hi) = binomial_bounds(80.0, 1000.0, 0.95);
        assert!((lo - 0.06632).abs() < 1e-4, "lower {lo}");
        assert!((hi - 0.09555).abs() < 1e-4, "upper {hi}");
        // A million requests: within a few tenths of a percent of the measured 8%.
        let (lo, hi) = binomial_bounds(80_000.0, 1_000_000.0, 0.99);
        assert!(
            lo > 0.0793 && lo < 0.08 && hi > 0.08 && hi < 0.0807,
            "{lo} {hi}"
        );
    }

    #[test]
    fn bound_is_past_agrees_with_the_bounds() {
        let cases = [
            (1.0, 3.0),
            (0.0, 10.0),
            (6.0, 100.0),
            (8.0, 100.0),
            (80.0, 1000.0),
            (10.0, 10.0),
            (2.5, 10.5),
        ];
        for (x, n) in cases {
            for confidence in [0.5, 0.9, 0.95, 0.99] {
                let (lo, hi) = binomial_bounds(x, n, confidence);
                // The rule skips the bound when the ratio is not past the threshold.
                assert!(
                    lo <= x / n && x / n <= hi,
                    "{x}/{n} at {confidence}: {lo} {hi}"
                );
                for t in [0.0, 0.01, 0.05, 0.0663, 0.1, 0.3, 0.9, 1.0] {
                    // Far from the bound both must agree; at it, rounding may differ.
                    if (lo - t).abs() > 1e-9 {
                        assert_eq!(
                            bound_is_past(x, n, t, confidence, true),
                            lo > t,
                            "{x}/{n} at {confidence}: lower {lo} vs {t}"
                        );
                    }
                    if (hi - t).abs() > 1e-9 {
                        assert_eq!(
                            bound_is_past(x, n, t, confidence, false),
                            hi < t,
                            "{x}/{n} at {confidence}: upper {hi} vs {t}"
                        );
                    }
                }
            }
        }
        assert!(!bound_is_past(1.0, 0.0, 0.05, 0.95, true));
        assert!(!bound_is_past(f64::NAN, 100.0, 0.05, 0.95, true));
    }

    #[test]
    fn bounds_handle_degenerate_counts() {
        assert_eq!(binomial_bounds(0.0, 0.0, 0.95), (0.0, 1.0));
        assert_eq!(binomial_bounds(f64::NAN, f64::NAN, 0.95), (0.0, 1.0));
        let (lo, hi) = binomial_bounds(5.0, 3.0, 0.95);
        assert!(
            lo > 0.3 && hi == 1.0,
            "errors above requests are clamped: {lo} {hi}"
        );
        let (lo, hi) = binomial_bounds(2.5, 10.5, 0.95);
        assert!(
            lo > 0.0 && lo < 2.5 / 10.5 && hi > 2.5 / 10.5 && hi < 1.0,
            "fractional counts: {lo} {hi}"
        );
    }
}
