//! A small fixed-width bit set: segment memberships and rule matches are
//! compared thousands of times per compile, so they are words, not trees.

/// A set of small integers (segment or rule indices).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    /// An empty set able to hold `0..len`.
    pub(crate) fn new(len: usize) -> Self {
        Bits(vec![0; len.div_ceil(64)])
    }

    pub(crate) fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub(crate) fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// True when the two sets share an element.
    pub(crate) fn intersects(&self, other: &Bits) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }

    /// The elements of `self ∩ other`, ascending.
    pub(crate) fn and_iter<'a>(&'a self, other: &'a Bits) -> impl Iterator<Item = usize> + 'a {
        self.0
            .iter()
            .zip(&other.0)
            .enumerate()
            .flat_map(|(wi, (a, b))| {
                let mut w = a & b;
                std::iter::from_fn(move || {
                    if w == 0 {
                        return None;
                    }
                    let bit = w.trailing_zeros() as usize;
                    w &= w - 1;
                    Some(wi * 64 + bit)
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic() {
        let mut a = Bits::new(130);
        let mut b = Bits::new(130);
        for i in [0, 63, 64, 129] {
            a.set(i);
        }
        b.set(64);
        b.set(129);
        b.set(5);
        assert!(a.get(63) && !a.get(5) && !a.get(1000));
        assert!(a.intersects(&b));
        assert_eq!(a.and_iter(&b).collect::<Vec<_>>(), [64, 129]);
        assert!(!Bits::new(130).intersects(&a));
    }
}
