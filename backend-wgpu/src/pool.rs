//! The buffer pool: every tensor buffer the backend hands out, and the
//! freed ones kept by size class for reuse.
//!
//! Sizes round up to a class (powers of two up to 1 MiB, then eighths of
//! the next power of two), so a freed buffer serves later requests of
//! similar size. Each handed-out buffer remembers its tensor type, so
//! `download` knows what it holds.
//!
//! A buffer freed while a segment is being recorded may still be read by
//! commands recorded earlier in that encoder. It may be reused for kernel
//! outputs (those write later in the same encoder), but not for uploads:
//! `Queue::write_buffer` lands before the encoder runs. Such buffers wait in
//! `recent` until the segment is submitted.

use std::collections::HashMap;
use std::sync::Mutex;

use tensorgraph_core::{BufferId, TensorType};

/// Smallest buffer: 16 bytes, so every buffer can be bound as `vec4`s.
const MIN_BYTES: u64 = 16;
/// Free buffers kept past this many bytes are released to the driver.
const KEEP_FREE_BYTES: u64 = 1 << 30;

/// A handed-out buffer.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The wgpu buffer (at least as large as the tensor, rounded up).
    pub buffer: wgpu::Buffer,
    /// What it holds.
    pub ty: TensorType,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    live: HashMap<u64, Slot>,
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    recent: HashMap<u64, Vec<wgpu::Buffer>>,
    free_bytes: u64,
    recording: bool,
}

/// Pooled storage buffers of one device.
#[derive(Debug)]
pub struct Pool {
    device: wgpu::Device,
    max_buffer: u64,
    state: Mutex<State>,
}

/// The size class of a request of `bytes`.
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(MIN_BYTES);
    let pow = bytes.next_power_of_two();
    if pow <= 1 << 20 {
        pow
    } else {
        bytes.next_multiple_of(pow / 8)
    }
}

impl Pool {
    /// An empty pool on `device`, never creating buffers past `max_buffer`.
    pub fn new(device: wgpu::Device, max_buffer: u64) -> Self {
        Pool {
            device,
            max_buffer,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, String> {
        self.state
            .lock()
            .map_err(|_| "buffer pool lock poisoned".to_string())
    }

    /// A buffer for a value of type `ty`. `for_upload` buffers avoid ones
    /// freed during the current recording (see the module docs).
    pub fn alloc(
        &self,
        ty: &TensorType,
        for_upload: bool,
    ) -> Result<(BufferId, wgpu::Buffer), String> {
        let bytes = ty.bytes() as u64;
        let mut class = size_class(bytes);
        if class > self.max_buffer {
            class = bytes.max(MIN_BYTES).next_multiple_of(MIN_BYTES);
        }
        if class > self.max_buffer {
            return Err(format!(
                "{ty} needs {bytes} bytes, more than this adapter's max_buffer_size ({})",
                self.max_buffer
            ));
        }
        let mut st = self.lock()?;
        let reused = match st.free.get_mut(&class).and_then(Vec::pop) {
            Some(b) => {
                st.free_bytes -= class;
                Some(b)
            }
            None if !for_upload => st.recent.get_mut(&class).and_then(Vec::pop),
            None => None,
        };
        let buffer = match reused {
            Some(b) => {
                tracing::debug!(target: "tensorgraph", "pool: reuse {class}-byte buffer for {ty} ({bytes} bytes)");
                b
            }
            None => self.create(class)?,
        };
        st.next_id += 1;
        let id = st.next_id;
        st.live.insert(
            id,
            Slot {
                buffer: buffer.clone(),
                ty: ty.clone(),
            },
        );
        Ok((BufferId(id), buffer))
    }

    fn create(&self, size: u64) -> Result<wgpu::Buffer, String> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensorgraph tensor"),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        match pollster::block_on(scope.pop()) {
            None => Ok(buffer),
            Some(e) => Err(format!("creating a {size}-byte buffer failed: {e}")),
        }
    }

    /// The buffer and type behind `id`.
    pub fn get(&self, id: BufferId) -> Result<Slot, String> {
        self.lock()?
            .live
            .get(&id.0)
            .cloned()
            .ok_or_else(|| format!("buffer {} is not alive in this backend", id.0))
    }

    /// Returns `id` to the pool; gives back the type it held.
    pub fn free(&self, id: BufferId) -> Result<TensorType, String> {
        let mut st = self.lock()?;
        let slot = st
            .live
            .remove(&id.0)
            .ok_or_else(|| format!("buffer {} freed twice or never allocated", id.0))?;
        let class = slot.buffer.size();
        if st.recording {
            st.recent.entry(class).or_default().push(slot.buffer);
        } else if st.free_bytes + class <= KEEP_FREE_BYTES {
            st.free_bytes += class;
            st.free.entry(class).or_default().push(slot.buffer);
        } else {
            drop(slot.buffer);
        }
        Ok(slot.ty)
    }

    /// Marks the start of a segment's recording.
    pub fn begin_recording(&self) -> Result<(), String> {
        self.lock()?.recording = true;
        Ok(())
    }

    /// Marks the segment submitted (or abandoned): buffers freed during it
    /// become free for every use.
    pub fn end_recording(&self) -> Result<(), String> {
        let mut st = self.lock()?;
        st.recording = false;
        let recent = std::mem::take(&mut st.recent);
        for (class, buffers) in recent {
            for b in buffers {
                if st.free_bytes + class <= KEEP_FREE_BYTES {
                    st.free_bytes += class;
                    st.free.entry(class).or_default().push(b);
                } else {
                    drop(b);
                }
            }
        }
        Ok(())
    }

    /// Buffers handed out and not yet freed.
    pub fn live(&self) -> usize {
        self.lock().map_or(0, |st| st.live.len())
    }

    /// Releases every free buffer to the driver.
    pub fn trim(&self) -> Result<(), String> {
        let mut st = self.lock()?;
        for b in st.free.drain().flat_map(|(_, v)| v) {
            drop(b);
        }
        st.free_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up() {
        assert_eq!(size_class(0), 16);
        assert_eq!(size_class(4), 16);
        assert_eq!(size_class(17), 32);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), (1 << 21) / 8 * 5);
        for b in [1u64, 100, 5000, 3 << 20, 123_456_789] {
            let c = size_class(b);
            assert!(
                c >= b && c.is_multiple_of(16) && c <= b.max(16) * 2,
                "{b} -> {c}"
            );
        }
    }
}
