//! The 32-bit Mersenne Twister (Matsumoto and Nishimura 1998), the engine of PyTorch's CPU
//! generator, seeded with the standard `init_genrand`.

use std::cell::Cell;

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
    #[inline]
    pub(super) fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        // `index < N` here, so the modulo never changes it; it only shows the bound.
        let y = self.state[self.index % N];
        self.index += 1;
        temper(y)
    }

    /// Fills `out` with the next `out.len()` outputs, the same as that many calls of
    /// [`next_u32`](Self::next_u32), tempering whole runs of state words at a time (a loop the
    /// compiler vectorises).
    #[inline(always)]
    pub(super) fn fill(&mut self, mut out: &mut [u32]) {
        while !out.is_empty() {
            if self.index >= N {
                self.twist();
            }
            let words = self.state.get(self.index..).unwrap_or(&[]);
            let n = words.len().min(out.len());
            let (head, tail) = out.split_at_mut(n);
            for (slot, &word) in head.iter_mut().zip(words) {
                *slot = temper(word);
            }
            self.index += n;
            out = tail;
        }
    }

    /// Skips the next `count` outputs, as that many calls of [`next_u32`](Self::next_u32)
    /// whose results are dropped.
    pub(super) fn skip(&mut self, mut count: usize) {
        while count > 0 {
            if self.index >= N {
                self.twist();
            }
            let n = (N - self.index).min(count);
            self.index += n;
            count -= n;
        }
    }

    /// Regenerates the 624 state words: word `i` becomes word `i + M` (modulo `N`; already
    /// regenerated when it wraps) xor the twisted mix of words `i` and `i + 1`.
    ///
    /// Word `i` reads the word `N - M = 227` places behind it once `i + M` wraps, which the
    /// loop before has just written. Written as three runs over disjoint slices (words 0..227
    /// from the old words 397..624; 227..454 from the new 0..227; 454..623 from the new
    /// 227..396), then the last word from the new word 396, so that the compiler sees that no
    /// run reads what it writes and vectorises each at full width (a single loop over
    /// 227..623 was vectorised four words at a time; this draws about 5% faster).
    #[inline(always)]
    fn twist(&mut self) {
        const LAG: usize = N - M;
        // `dst[k]` becomes `src[k]` xor the mix of itself and the word after it (`next` after
        // the last one), in increasing `k`, so the word after it is still the old one. Through
        // cells and pairs of neighbours, with no index that could fail.
        #[inline(always)]
        fn run(dst: &mut [u32], next: u32, src: &[u32]) {
            let cells = Cell::from_mut(dst).as_slice_of_cells();
            for (pair, &from) in cells.windows(2).zip(src) {
                if let [word, after] = pair {
                    word.set(from ^ mix(word.get(), after.get()));
                }
            }
            let last = cells.len().wrapping_sub(1);
            if let (Some(word), Some(&from)) = (cells.last(), src.get(last)) {
                word.set(from ^ mix(word.get(), next));
            }
        }
        // The splits are at constant positions inside the 624 words, so every `Some` below
        // holds; `if let` keeps even that from being a panic path.
        let s = &mut self.state;
        if let Some((first, rest)) = s.split_at_mut_checked(LAG) {
            if let (Some(&next), Some(src)) = (rest.first(), rest.get(M - LAG..)) {
                run(first, next, src);
            }
            if let Some((second, rest)) = rest.split_at_mut_checked(LAG) {
                if let Some(&next) = rest.first() {
                    run(second, next, first);
                }
                if let Some((third, rest)) = rest.split_at_mut_checked(N - 1 - 2 * LAG) {
                    if let Some(&next) = rest.first() {
                        run(third, next, second);
                    }
                }
            }
        }
        // Constant indices into the array: checked when compiling.
        s[N - 1] = s[M - 1] ^ mix(s[N - 1], s[0]);
        self.index = 0;
    }
}

/// The twisted mix of the upper bit of `upper` and the lower 31 bits of `lower`.
#[inline(always)]
fn mix(upper: u32, lower: u32) -> u32 {
    let y = (upper & UPPER_MASK) | (lower & LOWER_MASK);
    (y >> 1) ^ (if y & 1 == 1 { MATRIX_A } else { 0 })
}

/// mt19937's output tempering of one state word.
#[inline(always)]
fn temper(mut y: u32) -> u32 {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c_5680;
    y ^= (y << 15) & 0xefc6_0000;
    y ^ (y >> 18)
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

    /// Filling, skipping and drawing one at a time consume the engine alike, across twists.
    #[test]
    fn fill_and_skip_agree_with_single_draws() {
        let mut one = Mt19937::new(42);
        let mut bulk = one.clone();
        for (i, len) in [0, 1, 5, 623, 624, 625, 1000, 16, 2000, 3]
            .into_iter()
            .enumerate()
        {
            let expected: Vec<u32> = (0..len).map(|_| one.next_u32()).collect();
            if i % 3 == 2 {
                bulk.skip(len);
            } else {
                let mut got = vec![0; len];
                bulk.fill(&mut got);
                assert_eq!(got, expected, "fill of {len}");
            }
            assert_eq!(bulk.index, one.index);
            assert!(bulk == one, "state after {len}");
        }
    }
}
