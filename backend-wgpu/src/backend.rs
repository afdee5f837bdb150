//! The `Backend` trait for [`WgpuBackend`]: capability checks, buffers,
//! transfers and synchronisation. Segment execution is in `exec.rs`.

use std::sync::{Arc, mpsc};

use ndarray::ArrayD;
use tensorgraph_core::backend::{Env, Meter, Segment};
use tensorgraph_core::{
    Backend, BufferId, DType, Device, FusedExpr, Kernel, Op, Result, Shape, TensorType, Value,
};

use crate::WgpuBackend;
use crate::epilogue::MatMulProgram;
use crate::fused::{Access, FusedProgram};
use crate::params::MAX_RANK;
use crate::prologue::walked;

impl WgpuBackend {
    /// Why a tensor of type `ty` cannot live on this device, if it cannot.
    fn check_tensor(&self, ty: &TensorType) -> std::result::Result<(), String> {
        let limits = &self.gpu.limits;
        let bytes = ty.bytes() as u64;
        if ty.shape.rank() > MAX_RANK {
            return Err(format!(
                "{ty} has rank {}; the GPU kernels address at most {MAX_RANK} axes",
                ty.shape.rank()
            ));
        }
        if bytes > limits.max_buffer_size {
            return Err(format!(
                "{ty} is {bytes} bytes, larger than this adapter's max_buffer_size ({} bytes); run it on the CPU",
                limits.max_buffer_size
            ));
        }
        if bytes.next_multiple_of(16) > limits.max_storage_buffer_binding_size {
            return Err(format!(
                "{ty} is {bytes} bytes, larger than this adapter's max_storage_buffer_binding_size ({} bytes); run it on the CPU",
                limits.max_storage_buffer_binding_size
            ));
        }
        if ty.shape.numel() > u32::MAX as usize {
            return Err(format!(
                "{ty} has more elements than the shaders' 32-bit indices reach"
            ));
        }
        Ok(())
    }

    /// Why the fused program `expr` cannot run as `kernel` here, if it
    /// cannot: a malformed program, or more storage bindings (operands plus
    /// output) or parameters than the adapter allows one shader.
    fn check_fused(
        &self,
        expr: &Arc<FusedExpr>,
        kernel: &Kernel,
    ) -> std::result::Result<(), String> {
        let out = kernel
            .outputs
            .first()
            .ok_or("a fused kernel has one output")?;
        let program = FusedProgram::new(expr, &kernel.inputs, out)?;
        // Header and shape rows, then one row pair per strided operand.
        let strided = program
            .access()
            .iter()
            .filter(|a| **a == Access::Strided)
            .count();
        let params = 16 + 32 * (strided as u64 + 1);
        self.check_bindings("fused kernel", program.storage_buffers(), 1, params)
    }

    /// Why the matmul epilogue `expr` cannot run as `kernel` here, if it
    /// cannot: a malformed program, or more storage bindings than the
    /// adapter allows one shader even without A's and B's `vec4` views.
    fn check_epilogue(
        &self,
        expr: &Arc<FusedExpr>,
        kernel: &Kernel,
    ) -> std::result::Result<(), String> {
        let out = kernel
            .outputs
            .first()
            .ok_or("a matmul epilogue has one output")?;
        let program = MatMulProgram::epilogue(expr, &kernel.inputs, out)?.with_views(false);
        // a, b and the output are its own; uniforms are fixed and small.
        self.check_bindings("matmul epilogue", program.storage_buffers(), 3, 0)
    }

    /// Why the reduction prologue `expr` over `shape` cannot run as
    /// `kernel` here, if it cannot: a malformed program, or more storage
    /// bindings or parameters than the adapter allows one shader.
    fn check_prologue(
        &self,
        expr: &Arc<FusedExpr>,
        shape: &Shape,
        kernel: &Kernel,
    ) -> std::result::Result<(), String> {
        let out = kernel
            .outputs
            .first()
            .ok_or("a reduction prologue has one output")?;
        let reduced = TensorType::new(out.dtype, shape.dims().to_vec());
        if reduced.shape.rank() > MAX_RANK {
            return Err(format!(
                "the reduced tensor {reduced} has rank {}; the GPU kernels address at most {MAX_RANK} axes",
                reduced.shape.rank()
            ));
        }
        let program = FusedProgram::new(expr, &kernel.inputs, &reduced)
            .map_err(|e| format!("reduction prologue: {e}"))?;
        let walked = program.access().iter().filter(|a| walked(**a)).count() as u64;
        let params = 32 + 64 + 64 * walked;
        self.check_bindings("reduction prologue", program.storage_buffers(), 1, params)
    }

    /// `Err` when a generated kernel needs more storage buffers (`storage`,
    /// `own` of them its fixed bindings, the rest operands) or uniform bytes
    /// (`params`) than the adapter allows one shader.
    fn check_bindings(
        &self,
        kernel: &str,
        storage: usize,
        own: usize,
        params: u64,
    ) -> std::result::Result<(), String> {
        let limits = &self.gpu.limits;
        let max = limits.max_storage_buffers_per_shader_stage as usize;
        if storage > max {
            return Err(format!(
                "{kernel} reads {} operands: {storage} storage buffers with its own {own}, \
                 past this adapter's max_storage_buffers_per_shader_stage ({max}); \
                 split it into kernels of at most {} operands",
                storage.saturating_sub(own),
                max.saturating_sub(own)
            ));
        }
        if params > limits.max_uniform_buffer_binding_size {
            return Err(format!(
                "{kernel} needs {params} bytes of parameters, past this adapter's \
                 max_uniform_buffer_binding_size ({})",
                limits.max_uniform_buffer_binding_size
            ));
        }
        Ok(())
    }

    /// Uploads `value` into a fresh pool buffer with `Queue::write_buffer`
    /// and reports it to `meter`.
    pub(crate) fn upload_value(
        &self,
        value: &Value,
        meter: &Meter,
    ) -> std::result::Result<BufferId, String> {
        let ty = value.ty();
        self.check_tensor(&ty)?;
        let (id, buffer) = self.pool.alloc(&ty, true)?;
        let bytes: Vec<u8> = match value {
            Value::F32(a) => match a.as_slice() {
                Some(s) => bytemuck::cast_slice(s).to_vec(),
                None => a.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
            Value::I32(a) => match a.as_slice() {
                Some(s) => bytemuck::cast_slice(s).to_vec(),
                None => a.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
        };
        if !bytes.is_empty() {
            self.gpu.queue.write_buffer(&buffer, 0, &bytes);
        }
        meter.alloc(ty.bytes());
        Ok(id)
    }

    /// Copies a buffer to the host: a staging copy, one submit, a map and
    /// a blocking poll; `land` gets the buffer's type and bytes while they
    /// are mapped.
    fn read_back<R>(
        &self,
        id: BufferId,
        land: impl FnOnce(&TensorType, &[u8]) -> std::result::Result<R, String>,
    ) -> std::result::Result<R, String> {
        let slot = self.pool.get(id)?;
        let ty = slot.ty;
        let bytes = ty.bytes() as u64;
        if bytes == 0 {
            return land(&ty, &[]);
        }
        let device = &self.gpu.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensorgraph download"),
            size: bytes.next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("tensorgraph download"),
        });
        encoder.copy_buffer_to_buffer(&slot.buffer, 0, &staging, 0, bytes.next_multiple_of(4));
        self.gpu.queue.submit([encoder.finish()]);
        let (tx, rx) = mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            // The receiver outlives the poll below; a failed send only
            // means the caller already gave up.
            let _ = tx.send(r);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| format!("waiting for the GPU failed: {e}"))?;
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(format!("download failed: {e}"));
        }
        rx.recv()
            .map_err(|_| "buffer mapping was abandoned".to_string())?
            .map_err(|e| format!("mapping the download buffer failed: {e}"))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| format!("reading the mapped buffer failed: {e}"))?;
        let landed = land(&ty, &view[..bytes as usize]);
        drop(view);
        staging.unmap();
        landed
    }
}

/// A new host value of type `ty` holding `bytes` (little-endian elements).
fn value_from_bytes(ty: &TensorType, bytes: &[u8]) -> std::result::Result<Value, String> {
    let mut value = Value::zeros(ty);
    write_bytes(&mut value, bytes)?;
    Ok(value)
}

/// Copies `bytes` (little-endian 4-byte elements, as the GPU stores them)
/// into `dst`'s elements, in logical order.
fn write_bytes(dst: &mut Value, bytes: &[u8]) -> std::result::Result<(), String> {
    fn copy<T: bytemuck::Pod>(a: &mut ArrayD<T>, bytes: &[u8]) -> std::result::Result<(), String> {
        if size_of::<T>() != 4 || a.len() * 4 != bytes.len() {
            return Err(format!(
                "{} bytes downloaded for {} elements",
                bytes.len(),
                a.len()
            ));
        }
        let word =
            |b: &[u8]| bytemuck::cast::<u32, T>(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match a.as_slice_mut() {
            // The mapped range may not be aligned for `T`: copy as bytes.
            Some(s) if cfg!(target_endian = "little") => {
                bytemuck::cast_slice_mut::<T, u8>(s).copy_from_slice(bytes)
            }
            Some(s) => s
                .iter_mut()
                .zip(bytes.chunks_exact(4))
                .for_each(|(x, b)| *x = word(b)),
            None => a
                .iter_mut()
                .zip(bytes.chunks_exact(4))
                .for_each(|(x, b)| *x = word(b)),
        }
        Ok(())
    }
    match dst {
        Value::F32(a) => copy(a, bytes),
        Value::I32(a) => copy(a, bytes),
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn device(&self) -> Device {
        Device::Gpu
    }

    fn supports(&self, kernel: &Kernel) -> std::result::Result<(), String> {
        for ty in kernel.inputs.iter().chain(&kernel.outputs) {
            self.check_tensor(ty)?;
        }
        let dtype = kernel
            .inputs
            .first()
            .or(kernel.outputs.first())
            .map(|t| t.dtype);
        match &kernel.op {
            Op::Unary(u) if u.float_only() && dtype == Some(DType::I32) => {
                Err(format!("{} is defined for f32 only", u.name()))
            }
            Op::Unary(_) => Ok(()),
            Op::Input { .. }
            | Op::Constant(_)
            | Op::Binary(_)
            | Op::MatMul
            | Op::Reduce { .. }
            | Op::Layout(_)
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Cast(_) => Ok(()),
            Op::Fused(expr) => self.check_fused(expr, kernel),
            Op::MatMulEpilogue(expr) => self.check_epilogue(expr, kernel),
            Op::ReducePrologue { expr, shape, .. } => self.check_prologue(expr, shape, kernel),
            Op::Custom(_) => Err("custom ops run on the CPU".into()),
            Op::Transfer { .. } => Err("transfers are run by the executor".into()),
        }
    }

    fn alloc(&self, ty: &TensorType, meter: &Meter) -> Result<BufferId> {
        self.check_tensor(ty).map_err(|m| self.error("alloc", m))?;
        let (id, _) = self
            .pool
            .alloc(ty, false)
            .map_err(|m| self.error("alloc", m))?;
        meter.alloc(ty.bytes());
        Ok(id)
    }

    fn free(&self, buffer: BufferId, meter: &Meter) -> Result<()> {
        let ty = self.pool.free(buffer).map_err(|m| self.error("free", m))?;
        meter.free(ty.bytes());
        Ok(())
    }

    fn upload(&self, value: &Value, meter: &Meter) -> Result<BufferId> {
        self.upload_value(value, meter)
            .map_err(|m| self.error("upload", m))
    }

    fn download(&self, buffer: BufferId) -> Result<Value> {
        self.read_back(buffer, value_from_bytes)
            .map_err(|m| self.error("download", m))
    }

    fn take_into(&self, buffer: BufferId, meter: &Meter, dst: &mut Value) -> Result<()> {
        let landed = self.read_back(buffer, |ty, bytes| {
            if dst.ty() == *ty {
                write_bytes(dst, bytes)
            } else {
                *dst = value_from_bytes(ty, bytes)?;
                Ok(())
            }
        });
        // The download's error, when there is one, is the one to report.
        let freed = self.free(buffer, meter);
        landed.map_err(|m| self.error("download", m))?;
        freed
    }

    fn execute(&self, segment: &Segment<'_>, env: &Env<'_>) -> Result<()> {
        self.run_segment(segment, env)
    }

    /// Elementwise kernels (fused, or a lone unary, binary or cast run as
    /// a generated program of one op) whose result has some operand's
    /// exact type: the generated shader then reads that operand through
    /// the output's `read_write` binding (see `FusedProgram::in_place`).
    /// Other kernels read neighbouring or reordered elements, or have
    /// fixed bindings.
    fn supports_in_place(&self, kernel: &Kernel) -> bool {
        kernel.elementwise_in_place()
    }

    /// The adapter's `max_storage_buffers_per_shader_stage` (the device is
    /// created with the adapter's own limits).
    fn max_kernel_buffers(&self) -> Option<usize> {
        Some(self.gpu.limits.max_storage_buffers_per_shader_stage as usize)
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| self.error("synchronize", format!("waiting for the GPU failed: {e}")))
    }

    fn live_buffers(&self) -> usize {
        self.pool.live()
    }
}
