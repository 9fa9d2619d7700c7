//! A small pool of device buffers and pinned host buffers, reused from study to study.
//!
//! Each slot holds at most one allocation that only grows: a study no larger than the
//! previous one allocates nothing, so steady-state preprocessing does no `cuMemAlloc` /
//! `cuMemHostAlloc` at all (both are slow and, for pinned memory, serialise the device).

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DeviceRepr, DriverError, PinnedHostSlice, ValidAsZeroBits,
};

/// A grow-only device allocation of `T`.
pub(crate) struct DeviceBuf<T> {
    buf: Option<CudaSlice<T>>,
}

impl<T: DeviceRepr> DeviceBuf<T> {
    pub(crate) fn new() -> Self {
        DeviceBuf { buf: None }
    }

    /// The buffer, holding at least `len` elements (contents undefined after a reallocation).
    pub(crate) fn ensure(
        &mut self,
        stream: &Arc<CudaStream>,
        len: usize,
    ) -> Result<&mut CudaSlice<T>, DriverError> {
        let len = len.max(1);
        let b = match self.buf.take() {
            Some(b) if b.len() >= len => b,
            old => {
                // Free first so the old and new allocation never coexist.
                drop(old);
                // SAFETY: every kernel and copy writes the elements it later reads; nothing
                // reads the uninitialised tail.
                unsafe { stream.alloc::<T>(len) }?
            }
        };
        Ok(self.buf.insert(b))
    }

    /// The current allocation, if any.
    pub(crate) fn get(&self) -> Option<&CudaSlice<T>> {
        self.buf.as_ref()
    }

    /// Bytes currently allocated.
    pub(crate) fn bytes(&self) -> usize {
        self.buf
            .as_ref()
            .map_or(0, |b| b.len() * std::mem::size_of::<T>())
    }
}

/// A grow-only page-locked host allocation of `T`, for uploads at full bus speed (the driver
/// can DMA straight from it instead of staging through its own bounce buffer).
pub(crate) struct PinnedBuf<T> {
    buf: Option<PinnedHostSlice<T>>,
}

impl<T: DeviceRepr + ValidAsZeroBits> PinnedBuf<T> {
    pub(crate) fn new() -> Self {
        PinnedBuf { buf: None }
    }

    /// The pinned buffer holding at least `len` elements. Waits for any copy still reading it.
    pub(crate) fn ensure(
        &mut self,
        ctx: &Arc<CudaContext>,
        len: usize,
    ) -> Result<&mut PinnedHostSlice<T>, DriverError> {
        let len = len.max(1);
        let b = match self.buf.take() {
            Some(b) if b.len() >= len => b,
            old => {
                drop(old);
                // Plain pinned memory (flags 0), not write-combined: a decoder may read back
                // what it wrote, and write-combined memory is very slow to read on the CPU.
                // SAFETY: callers only read elements they wrote first.
                unsafe { ctx.alloc_pinned_with_flags::<T>(len, 0) }?
            }
        };
        Ok(self.buf.insert(b))
    }

    /// The first `len` staged elements, to copy from (a plain slice, so a copy can take
    /// exactly `len` of a larger buffer).
    pub(crate) fn host(&self, len: usize) -> Result<&[T], super::GpuError> {
        let b = self
            .buf
            .as_ref()
            .filter(|b| b.len() >= len)
            .ok_or_else(|| super::GpuError::Input(format!("{len} values were not staged")))?;
        let s = b.as_slice().map_err(|e| super::GpuError::Driver {
            what: "pinned wait",
            reason: format!("{e:?}"),
        })?;
        Ok(&s[..len])
    }

    /// Bytes currently allocated.
    pub(crate) fn bytes(&self) -> usize {
        self.buf
            .as_ref()
            .map_or(0, |b| b.len() * std::mem::size_of::<T>())
    }
}

/// A device table of interpolation taps plus the host copy of what it holds, so a grid used
/// again (the same coarse grid for every study of one size; every repetition in the bench)
/// costs no upload.
pub(crate) struct TapSlot {
    buf: DeviceBuf<i32>,
    on_device: Vec<i32>,
}

impl TapSlot {
    pub(crate) fn new() -> Self {
        TapSlot {
            buf: DeviceBuf::new(),
            on_device: Vec::new(),
        }
    }

    /// Makes `taps` the table's content (queues an upload only when it differs).
    pub(crate) fn load(
        &mut self,
        stream: &Arc<CudaStream>,
        taps: Vec<i32>,
    ) -> Result<&CudaSlice<i32>, DriverError> {
        if self.on_device != taps || self.buf.get().is_none() {
            // Forget the old content first: if the upload fails, the next call retries.
            self.on_device.clear();
            let b = self.buf.ensure(stream, taps.len())?;
            stream.memcpy_htod(taps.as_slice(), &mut b.slice_mut(..taps.len()))?;
            self.on_device = taps;
        }
        let b = self.buf.ensure(stream, self.on_device.len())?;
        Ok(b)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.buf.bytes()
    }
}

/// Every buffer the preprocessor keeps between studies.
pub(crate) struct Pool {
    /// Raw stored values as decoded (one of the two, by pixel representation).
    pub(crate) raw_s16: DeviceBuf<i16>,
    pub(crate) raw_u16: DeviceBuf<u16>,
    /// The study's HU volume, resident for the whole study.
    pub(crate) hu: DeviceBuf<i16>,
    /// Whole-volume clipped/normalised HU (f32).
    pub(crate) unit: DeviceBuf<f32>,
    /// Per-axis interpolation tap tables (int4 per entry): model-grid input, native mask.
    pub(crate) input_taps: TapSlot,
    pub(crate) mask_taps: TapSlot,
    /// A model grid input `[C, D, H, W]`.
    pub(crate) model: DeviceBuf<f32>,
    /// The segmenter's class probabilities `[K, D, H, W]`.
    pub(crate) probs: DeviceBuf<f32>,
    /// Labels over the crop's native box.
    pub(crate) mask: DeviceBuf<u8>,
    /// The two-pass mask's candidate list (box offsets) and its length.
    pub(crate) mask_cands: DeviceBuf<u32>,
    pub(crate) mask_count: DeviceBuf<u32>,
    /// Pinned staging for uploads.
    pub(crate) stage_s16: PinnedBuf<i16>,
    pub(crate) stage_u16: PinnedBuf<u16>,
    pub(crate) stage_f32: PinnedBuf<f32>,
    /// Pinned landing buffers for downloads (model inputs, mask box).
    pub(crate) down_f32: PinnedBuf<f32>,
    pub(crate) down_u8: PinnedBuf<u8>,
}

impl Pool {
    pub(crate) fn new() -> Self {
        Pool {
            raw_s16: DeviceBuf::new(),
            raw_u16: DeviceBuf::new(),
            hu: DeviceBuf::new(),
            unit: DeviceBuf::new(),
            input_taps: TapSlot::new(),
            mask_taps: TapSlot::new(),
            model: DeviceBuf::new(),
            probs: DeviceBuf::new(),
            mask: DeviceBuf::new(),
            mask_cands: DeviceBuf::new(),
            mask_count: DeviceBuf::new(),
            stage_s16: PinnedBuf::new(),
            stage_u16: PinnedBuf::new(),
            stage_f32: PinnedBuf::new(),
            down_f32: PinnedBuf::new(),
            down_u8: PinnedBuf::new(),
        }
    }

    /// (device bytes, pinned host bytes) currently held.
    pub(crate) fn footprint(&self) -> (usize, usize) {
        let device = self.raw_s16.bytes()
            + self.raw_u16.bytes()
            + self.hu.bytes()
            + self.unit.bytes()
            + self.input_taps.bytes()
            + self.mask_taps.bytes()
            + self.model.bytes()
            + self.probs.bytes()
            + self.mask.bytes()
            + self.mask_cands.bytes()
            + self.mask_count.bytes();
        let host = self.stage_s16.bytes()
            + self.stage_u16.bytes()
            + self.stage_f32.bytes()
            + self.down_f32.bytes()
            + self.down_u8.bytes();
        (device, host)
    }
}
