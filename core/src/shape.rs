//! Shapes, axis normalisation and NumPy broadcasting.

use std::fmt;

/// The dimensions of a tensor, outermost first. A rank-0 shape is a scalar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The scalar shape `[]`.
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar); saturates rather than
    /// overflowing, so absurd shapes fail at allocation with a clear error.
    pub fn numel(&self) -> usize {
        self.0.iter().fold(1usize, |n, &d| n.saturating_mul(d))
    }

    /// Row-major (C order) strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.rank()];
        let mut acc = 1;
        for (s, d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc *= *d;
        }
        strides
    }

    /// The NumPy broadcast of two shapes: trailing dimensions align, and a
    /// dimension of 1 stretches. `None` when they do not broadcast.
    pub fn broadcast(&self, other: &Shape) -> Option<Shape> {
        let rank = self.rank().max(other.rank());
        let mut out = vec![0; rank];
        for (i, o) in out.iter_mut().enumerate() {
            let a = dim_from_end(&self.0, rank - 1 - i);
            let b = dim_from_end(&other.0, rank - 1 - i);
            *o = match (a, b) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return None,
            };
        }
        Some(Shape(out))
    }

    /// Whether `self` can be broadcast to `target` (one-directional).
    pub fn broadcasts_to(&self, target: &Shape) -> bool {
        self.rank() <= target.rank()
            && self
                .0
                .iter()
                .rev()
                .zip(target.0.iter().rev())
                .all(|(&s, &t)| s == t || s == 1)
    }

    /// Normalise a possibly negative axis against this rank.
    pub fn axis(&self, axis: isize) -> Option<usize> {
        normalize_axis(axis, self.rank())
    }
}

/// The `k`-th dimension counted from the end, 1 when the shape is shorter.
fn dim_from_end(dims: &[usize], k: usize) -> usize {
    if k < dims.len() {
        dims[dims.len() - 1 - k]
    } else {
        1
    }
}

/// A negative axis counts from the end, as in NumPy.
pub fn normalize_axis(axis: isize, rank: usize) -> Option<usize> {
    let rank = rank as isize;
    let a = if axis < 0 { axis + rank } else { axis };
    (0..rank).contains(&a).then_some(a as usize)
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy() {
        let s = |d: &[usize]| Shape::from(d);
        assert_eq!(s(&[3, 1]).broadcast(&s(&[4])), Some(s(&[3, 4])));
        assert_eq!(s(&[2, 1, 5]).broadcast(&s(&[7, 1])), Some(s(&[2, 7, 5])));
        assert_eq!(s(&[]).broadcast(&s(&[2, 3])), Some(s(&[2, 3])));
        assert_eq!(s(&[3]).broadcast(&s(&[4])), None);
        assert_eq!(s(&[0]).broadcast(&s(&[1])), Some(s(&[0])));
    }

    #[test]
    fn axes_and_strides() {
        let s = Shape::from([2, 3, 4]);
        assert_eq!(s.axis(-1), Some(2));
        assert_eq!(s.axis(3), None);
        assert_eq!(s.axis(-4), None);
        assert_eq!(s.strides(), vec![12, 4, 1]);
        assert!(Shape::from([3, 1]).broadcasts_to(&Shape::from([2, 3, 5])));
        assert!(!Shape::from([3, 2]).broadcasts_to(&Shape::from([3, 5])));
    }
}
