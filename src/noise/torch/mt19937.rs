//! The 32-bit Mersenne Twister (Matsumoto and Nishimura 1998), the engine of PyTorch's CPU
//! generator, seeded with the standard `init_genrand`.

/// Words of state.
const N: usize = 624;
/// The twist's middle offset.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// An mt19937 engine.
#[derive(Clone, PartialEq)]
pub(super) struct Mt19937 {
    /// The state words.
    state: [u32; N],
    /// The next state word to temper; `N` when the state must be twisted first. Never above `N`.
    index: usize,
}

impl Mt19937 {
    /// `init_genrand(seed)`.
    pub(super) fn new(seed: u32) -> Self {
        let mut state = [0u32; N];
        let mut word = seed;
        for (i, slot) in state.iter_mut().enumerate() {
            if i > 0 {
                word = 1_812_433_253u32
                    .wrapping_mul(word ^ (word >> 30))
                    .wrapping_add(i as u32);
            }
            *slot = word;
        }
        Mt19937 { state, index: N }
    }

    /// How many words of the current state have been used (for `Debug`).
    pub(super) fn position(&self) -> usize {
        self.index
    }

    /// The next tempered output.
    pub(super) fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        // `index < N` here, so the modulo never changes it; it only shows the bound.
        let mut y = self.state[self.index % N];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// Regenerates the 624 state words (every index is reduced modulo `N`).
    fn twist(&mut self) {
        let s = &mut self.state;
        for i in 0..N {
            let y = (s[i] & UPPER_MASK) | (s[(i + 1) % N] & LOWER_MASK);
            let odd = if y & 1 == 1 { MATRIX_A } else { 0 };
            s[i] = s[(i + M) % N] ^ (y >> 1) ^ odd;
        }
        self.index = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_engine() {
        // The C++ standard requires the 10000th output of a default-seeded mt19937 to be this.
        let mut engine = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = engine.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }
}
