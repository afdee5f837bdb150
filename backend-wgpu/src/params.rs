//! Kernel parameters as the shaders' uniform `Params` structs see them,
//! and the stride arithmetic that feeds them.

/// Most axes a kernel addresses (each shader's arrays hold 8).
pub const MAX_RANK: usize = 8;

/// A uniform `Params` block under construction: a header of `u32` scalars
/// padded to a 16-byte row, then `array<vec4<u32>, 2>` fields.
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<u32>);

impl Params {
    /// A block whose header holds `scalars` (padded to a multiple of 4).
    pub fn new(scalars: &[u32]) -> Self {
        let mut words = scalars.to_vec();
        words.resize(scalars.len().next_multiple_of(4), 0);
        Params(words)
    }

    /// Appends one `array<vec4<u32>, 2>` field holding `values`.
    pub fn array(mut self, values: &[usize]) -> Result<Self, String> {
        if values.len() > MAX_RANK {
            return Err(format!(
                "rank {} exceeds the GPU backend's limit of {MAX_RANK}",
                values.len()
            ));
        }
        let start = self.0.len();
        for &v in values {
            self.0.push(to_u32(v)?);
        }
        self.0.resize(start + MAX_RANK, 0);
        Ok(self)
    }

    /// The bytes to upload.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

/// `v` as a shader `u32`, or why it does not fit.
pub fn to_u32(v: usize) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{v} does not fit the shaders' 32-bit indices"))
}

/// Row-major element strides of `dims`.
pub fn contiguous(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; dims.len()];
    let mut acc = 1;
    for (s, d) in strides.iter_mut().zip(dims).rev() {
        *s = acc;
        acc *= *d;
    }
    strides
}

/// Strides reading an operand of shape `dims` broadcast to `rank` output
/// axes (NumPy alignment from the right; stretched axes get stride 0).
pub fn broadcast_strides(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let own = contiguous(dims);
    let lead = out.len() - dims.len().min(out.len());
    (0..out.len())
        .map(|i| {
            if i < lead {
                0
            } else {
                let j = i - lead;
                if dims[j] == 1 && out[i] != 1 {
                    0
                } else {
                    own[j]
                }
            }
        })
        .collect()
}

/// Simplifies a strided iteration over `dims` shared by several operands
/// (`strides[k]` per operand): drops unit axes and merges neighbours that
/// are contiguous for every operand. Same elements, fewer axes.
pub fn collapse(dims: &[usize], strides: &[Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_dims: Vec<usize> = Vec::with_capacity(dims.len());
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(dims.len()); strides.len()];
    for (i, &d) in dims.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let mergeable = !out_dims.is_empty()
            && strides
                .iter()
                .zip(&out_strides)
                .all(|(s, o)| o.last().is_some_and(|&prev| prev == s[i] * d));
        if mergeable {
            if let Some(last) = out_dims.last_mut() {
                *last *= d;
            }
            for (s, o) in strides.iter().zip(&mut out_strides) {
                if let Some(last) = o.last_mut() {
                    *last = s[i];
                }
            }
        } else {
            out_dims.push(d);
            for (s, o) in strides.iter().zip(&mut out_strides) {
                o.push(s[i]);
            }
        }
    }
    (out_dims, out_strides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_layout() {
        let p = Params::new(&[1, 2, 3, 4, 5])
            .array(&[7, 8])
            .expect("rank 2 fits");
        assert_eq!(p.bytes().len(), (8 + 8) * 4);
        assert!(Params::new(&[]).array(&[1; 9]).is_err());
    }

    #[test]
    fn broadcasting_strides() {
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
        assert_eq!(broadcast_strides(&[4], &[2, 3, 4]), vec![0, 0, 1]);
        assert_eq!(broadcast_strides(&[], &[2]), vec![0]);
    }

    #[test]
    fn collapse_merges_contiguous_axes() {
        let dims = [2, 3, 4];
        let (d, s) = collapse(&dims, &[contiguous(&dims), contiguous(&dims)]);
        assert_eq!((d, s), (vec![24], vec![vec![1], vec![1]]));
        // A broadcast operand keeps its axes apart from the others.
        let (d, s) = collapse(&dims, &[contiguous(&dims), vec![0, 4, 1]]);
        assert_eq!(d, vec![2, 12]);
        assert_eq!(s, vec![vec![12, 1], vec![0, 1]]);
        let (d, _) = collapse(&[1, 1], &[vec![1, 1]]);
        assert!(d.is_empty());
    }
}
