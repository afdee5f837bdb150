//! Lowering each op family to recorded dispatches: parameters, bindings
//! and workgroup counts. One file per family, matching `shaders/`.

pub mod elementwise;
pub mod fused;
pub mod layout;
pub mod matmul;
pub mod reduce;

use tensorgraph_core::TensorType;

use crate::record::Binding;

/// Threads per workgroup of the elementwise and layout shaders.
pub const WG: u64 = 256;

/// A tensor on the device: its buffer and type.
#[derive(Debug, Clone)]
pub struct Operand {
    /// The pooled buffer.
    pub buffer: wgpu::Buffer,
    /// What it holds.
    pub ty: TensorType,
}

impl Operand {
    /// Elements.
    pub fn numel(&self) -> usize {
        self.ty.shape.numel()
    }

    /// The dims.
    pub fn dims(&self) -> &[usize] {
        self.ty.shape.dims()
    }

    /// The tensor's bytes bound as scalars.
    pub fn binding(&self) -> Binding {
        Binding::scalars(&self.buffer, self.ty.bytes())
    }
}
