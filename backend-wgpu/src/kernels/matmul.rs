//! Batched matrix product through the tiled `matmul.wgsl` kernel.

use super::Operand;
use crate::params::{Params, broadcast_strides, collapse, to_u32};
use crate::record::{Binding, Recorder};
use crate::shaders;

/// Output tile edge of one workgroup.
const TILE: usize = 64;

/// `c = a x b` over the last two axes; leading axes broadcast.
pub fn matmul(rec: &mut Recorder<'_>, a: &Operand, b: &Operand, c: &Operand) -> Result<(), String> {
    let (ad, bd, cd) = (a.dims(), b.dims(), c.dims());
    if ad.len() < 2 || bd.len() < 2 || cd.len() < 2 {
        return Err(format!(
            "matmul needs rank >= 2 operands, got {} and {}",
            a.ty, b.ty
        ));
    }
    let (m, k, n) = (ad[ad.len() - 2], ad[ad.len() - 1], bd[bd.len() - 1]);
    if c.numel() == 0 {
        return Ok(());
    }
    let batch_out = &cd[..cd.len() - 2];
    let scale = |s: Vec<usize>, mat: usize| s.into_iter().map(|v| v * mat).collect::<Vec<_>>();
    let a_strides = scale(broadcast_strides(&ad[..ad.len() - 2], batch_out), m * k);
    let b_strides = scale(broadcast_strides(&bd[..bd.len() - 2], batch_out), k * n);
    let (batch_dims, strides) = collapse(batch_out, &[a_strides, b_strides]);
    let batch: usize = batch_out.iter().product();
    let (tiles_n, tiles_m) = (n.div_ceil(TILE), m.div_ceil(TILE));
    let params = Params::new(&[
        to_u32(m)?,
        to_u32(n)?,
        to_u32(k)?,
        to_u32(batch)?,
        to_u32(tiles_n)?,
        to_u32(tiles_m)?,
        u32::from(k % 4 == 0),
        u32::from(n % 4 == 0),
        to_u32(batch_dims.len())?,
    ])
    .array(&batch_dims)?
    .array(&strides[0])?
    .array(&strides[1])?;
    let bindings = vec![
        a.binding(),
        Binding::vec4s(&a.buffer, a.ty.bytes()),
        b.binding(),
        Binding::vec4s(&b.buffer, b.ty.bytes()),
        c.binding(),
    ];
    let groups = (tiles_n * tiles_m) as u64 * batch as u64;
    rec.dispatch(&shaders::matmul(c.ty.dtype), bindings, params, groups)
}
