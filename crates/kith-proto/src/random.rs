//! Randomness from the operating system.

/// Returns `N` bytes from the operating system's cryptographic random source.
///
/// # Panics
///
/// Panics only if the operating system cannot provide randomness at all
/// (`getrandom` fails), in which case no key or nonce could be made safely and
/// stopping is the only sound choice. This never depends on outside input.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_draws_differ() {
        assert_ne!(random_bytes::<32>(), random_bytes::<32>());
    }
}
