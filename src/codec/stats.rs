//! Histograms and entropies of element fields.

pub use super::huffman::ALPHABET;

pub type Histogram = [u64; ALPHABET];

/// Shannon entropy in bits per symbol.
pub fn entropy(histogram: &[u64]) -> f64 {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return 0.0;
    }
    entropy_bits(histogram) / total as f64
}

/// Total bits of an ideal entropy coder for the histogram: Σ c·log2(n/c).
pub(crate) fn entropy_bits(histogram: &[u64]) -> f64 {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let log_total = (total as f64).log2();
    histogram
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| count as f64 * (log_total - (count as f64).log2()))
        .sum()
}

pub(crate) fn add_into(total: &mut Histogram, part: &Histogram) {
    for (t, p) in total.iter_mut().zip(part) {
        *t += p;
    }
}

pub(crate) fn distinct(histogram: &Histogram) -> usize {
    histogram.iter().filter(|&&c| c > 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_skewed() {
        assert_eq!(entropy(&[4, 4, 4, 4]), 2.0);
        assert_eq!(entropy(&[7, 0, 0]), 0.0);
        assert!((entropy(&[1, 3]) - 0.811_278).abs() < 1e-5);
    }
}
