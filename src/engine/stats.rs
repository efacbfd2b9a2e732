//! Statistics for rules that ask for confidence: exact (Clopper-Pearson) one-sided bounds
//! on a binomial rate; for judges, the mixture sequential probability ratio of a rate
//! against a bar ([`log_mixture_ratio`]) and Mann-Whitney U ([`mann_whitney_greater`]).
//!
//! The bounds are exact rather than a normal approximation such as Wilson's because the
//! samples that need a guard are the small ones, where approximations fail: the Wilson
//! 95% lower bound for 1 error in 3 requests is 7.8%, so "> 5% with 95% confidence"
//! would fire on a single error; the exact bound is 1.7%.

use statrs::function::beta::{beta_reg, inv_beta_reg, ln_beta};
use statrs::function::erf::erfc;

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

/// The log of the mixture likelihood ratio of `errors` in `n` requests against a bar
/// rate `bar`, for the one-sided question "is the true rate above the bar" (`above`)
/// or "below it". The alternatives are mixed with a Beta(1, (1 - bar) / bar) prior (mean
/// `bar`) cut to the side asked about:
///
/// `L = ∫ (p / bar)^x ((1 - p) / (1 - bar))^(n - x) π(p) dp`
///   `= B(1 + x, b + n - x) / B(1, b) · T(1 + x, b + n - x) / T(1, b) / (bar^x (1 - bar)^(n - x))`
///
/// with `b = (1 - bar) / bar` and `T` the prior's mass on the asked side (`1 - I_bar`
/// above, `I_bar` below). For every true rate on the other side of the bar, `L` is a
/// nonnegative supermartingale as requests come in, so by Ville's inequality it ever
/// reaches `1 / alpha` with probability at most `alpha`: the test may be asked after
/// every reading. Counts may be fractional. `bar` must be inside (0, 1).
pub fn log_mixture_ratio(errors: f64, n: f64, bar: f64, above: bool) -> f64 {
    let n = if n.is_finite() { n.max(0.0) } else { 0.0 };
    let x = if errors.is_finite() {
        errors.clamp(0.0, n)
    } else {
        0.0
    };
    let (a, b) = (1.0, (1.0 - bar) / bar);
    let (a1, b1) = (a + x, b + n - x);
    // The prior's and the posterior's mass on the asked side, in logs.
    let side = |a: f64, b: f64| {
        if above {
            beta_reg(b, a, 1.0 - bar).ln()
        } else {
            beta_reg(a, b, bar).ln()
        }
    };
    ln_beta(a1, b1) - ln_beta(a, b) + side(a1, b1)
        - side(a, b)
        - x * bar.ln()
        - (n - x) * (1.0 - bar).ln()
}

/// The one-sided p-value of Mann-Whitney U that `x` is stochastically greater than `y`
/// (normal approximation with the tie correction and a continuity correction). `weight`
/// (0 to 1] deflates the evidence for readings that are not independent: the statistic's
/// z is multiplied by `sqrt(weight)`, as if there were `weight` times as many readings.
/// With an empty side the answer is 1.
pub fn mann_whitney_greater(x: &[f64], y: &[f64], weight: f64) -> f64 {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    if x.is_empty() || y.is_empty() {
        return 1.0;
    }
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|v| (*v, true))
        .chain(y.iter().map(|v| (*v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_x, mut ties, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let mean_rank = (i + j + 2) as f64 / 2.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_x += mean_rank * all[i..=j].iter().filter(|(_, in_x)| *in_x).count() as f64;
        i = j + 1;
    }
    let u = rank_x - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)).max(1.0));
    if var <= 0.0 {
        return 1.0;
    }
    let z = (u - n1 * n2 / 2.0 - 0.5) / var.sqrt() * weight.clamp(0.0, 1.0).sqrt();
    0.5 * erfc(z / std::f64::consts::SQRT_2)
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

    /// A rate drawn at the bar never gives the mixture ratio much evidence against it,
    /// and a rate far above (below) the bar gives plenty for "above" ("below").
    #[test]
    fn the_mixture_ratio_grows_only_on_the_asked_side_of_the_bar() {
        let at_bar = log_mixture_ratio(100.0, 10_000.0, 0.01, true);
        assert!(at_bar < 0.0, "at the bar: {at_bar}");
        let above = log_mixture_ratio(300.0, 10_000.0, 0.01, true);
        assert!(above > (1.0f64 / 0.01).ln(), "3x the bar: {above}");
        let below = log_mixture_ratio(20.0, 10_000.0, 0.01, false);
        assert!(below > (1.0f64 / 0.01).ln(), "a fifth of the bar: {below}");
        assert!(log_mixture_ratio(20.0, 10_000.0, 0.01, true) < 0.0);
        assert!(log_mixture_ratio(300.0, 10_000.0, 0.01, false) < 0.0);
        // Nothing seen is no evidence.
        assert!(log_mixture_ratio(0.0, 0.0, 0.05, true).abs() < 1e-9);
        // One error in three requests is no proof of anything above 5%.
        assert!(log_mixture_ratio(1.0, 3.0, 0.05, true) < (1.0f64 / 0.05).ln());
    }

    /// Ville's inequality in practice: requests drawn at the bar, the ratio checked after
    /// every one of 200 batches, in 400 runs; the share of runs that ever reach 1/alpha
    /// must stay below alpha (with room for the sampling error of 400 runs).
    #[test]
    fn the_mixture_ratio_rarely_ever_crosses_under_continuous_checking() {
        let (bar, alpha): (f64, f64) = (0.02, 0.05);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut crossed = 0;
        for _ in 0..400 {
            let (mut x, mut n) = (0.0, 0.0);
            for _ in 0..200 {
                for _ in 0..50 {
                    x += f64::from(u8::from(uniform() < bar));
                }
                n += 50.0;
                if log_mixture_ratio(x, n, bar, true) >= (1.0 / alpha).ln() {
                    crossed += 1;
                    break;
                }
            }
        }
        assert!(crossed <= 30, "{crossed} of 400 runs crossed at alpha 5%");
    }

    #[test]
    fn mann_whitney_finds_a_shift_and_not_a_copy() {
        let y: Vec<f64> = (0..30).map(|i| 100.0 + f64::from(i % 10)).collect();
        let shifted: Vec<f64> = y.iter().map(|v| v + 8.0).collect();
        assert!(mann_whitney_greater(&shifted, &y, 1.0) < 0.001);
        assert!(mann_whitney_greater(&y, &shifted, 1.0) > 0.99);
        let p = mann_whitney_greater(&y, &y, 1.0);
        assert!(p > 0.4 && p < 0.6, "a copy: {p}");
        // Overlapping readings count for less: the same shift with a quarter of the
        // weight is less sure.
        let weighted = mann_whitney_greater(&shifted, &y, 0.25);
        assert!(weighted > mann_whitney_greater(&shifted, &y, 1.0) && weighted < 0.05);
        assert_eq!(mann_whitney_greater(&[], &y, 1.0), 1.0);
        // All values tied: no evidence either way.
        assert!(mann_whitney_greater(&[1.0; 5], &[1.0; 5], 1.0) > 0.5);
    }
}
