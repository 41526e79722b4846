//! The GPU core: everything the wgpu and CUDA backends share, and that the
//! tests share with them when they execute the CUDA kernel on the CPU.
//!
//! A GPU backend is a [`GpuBackend`] over a [`GpuDevice`]. The device does
//! what only it can — allocate and fill buffers, bind them, launch the
//! kernel, copy, wait and time — and the core does the rest, once: it cuts
//! tensors into segments that fit the device ([`layout`]), uploads their
//! planes, plans each decode into dispatch records and a work list
//! ([`plan`]), and turns the status word every block reports into an error
//! that names the job, the block and the problem, exactly as the CPU
//! decoder does. A GPU therefore accepts exactly the files the CPU decoder
//! accepts ([`crate::codec::decode::decode_blocks`]) and never hands
//! out the bytes of a block it could not decode.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use crate::codec::{BlockIndex, EncodedView, TensorParams};
use crate::error::Result;

use super::{
    Backend, BackendInfo, Clock, DecodeJob, DeviceBuffer, DeviceTensor, PendingDecode, Timings,
    backend_error, check_download, check_jobs, downcast,
};

pub mod layout;
pub mod plan;

use layout::{DispatchLimits, Segment};
use plan::{BlockOrigin, LaunchPlan, check_status};

/// The kernels write whole 32-bit words of output.
const OUTPUT_ALIGNMENT: u64 = 4;

/// A device buffer of a [`GpuDevice`].
pub trait DeviceMemory: Send + Sync + 'static {
    /// Bytes it occupies on the device.
    fn size(&self) -> u64;
}

/// What a GPU API gives the core: buffers, a launch of the decode kernel,
/// waiting and timing.
pub trait GpuDevice: Send + Sync + 'static {
    type Buffer: DeviceMemory;
    /// A decode prepared once (its records, bind groups and status words)
    /// and submitted any number of times, one at a time.
    type Launch: Send + 'static;
    /// A submitted decode, until [`finish`](Self::finish) returns.
    type Submission: Send + 'static;

    fn name(&self) -> &'static str;
    fn info(&self) -> BackendInfo;
    fn limits(&self) -> DispatchLimits;
    /// A buffer the kernel reads, holding `bytes` (a multiple of 4, never
    /// empty). `what` names it in errors.
    fn upload(&self, what: &str, bytes: &[u8]) -> Result<Self::Buffer>;
    /// A buffer of `bytes` (a multiple of 4) that kernels write and the
    /// host reads back. Its contents before a decode writes them are
    /// unspecified: it need not be cleared.
    fn alloc(&self, bytes: u64) -> Result<Self::Buffer>;
    /// Prepares `plan`, whose output is `out`; `timed` when its
    /// submissions will be timed.
    fn prepare(
        &self,
        plan: &LaunchPlan<'_, Self::Buffer>,
        out: &Self::Buffer,
        timed: bool,
    ) -> Result<Self::Launch>;
    /// Queues the plan's copies and kernel launch; `timed` brackets them
    /// with the device's clock.
    fn submit(
        &self,
        plan: &LaunchPlan<'_, Self::Buffer>,
        launch: &Self::Launch,
        out: &Self::Buffer,
        timed: bool,
    ) -> Result<Self::Submission>;
    /// Waits for `submission` and reads the status word of each of its
    /// blocks.
    fn finish(&self, launch: &Self::Launch, submission: &Self::Submission) -> Result<Finished>;
    /// Copies `out.len()` bytes from `offset` of `buffer` (in bounds) to
    /// the host.
    fn download(&self, buffer: &Self::Buffer, offset: u64, out: &mut [u8]) -> Result<()>;
    /// Device-to-device copies of `bytes` bytes, the reference decode
    /// speed is reported against.
    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Timings>;
    /// The clock of timed submissions.
    fn clock(&self) -> Clock;
}

/// What a finished submission reports.
pub struct Finished {
    /// One word per block, in work-list order: 0, or the block's problem
    /// (see `layout::status_problem`).
    pub status: Vec<u32>,
    /// Seconds between the device's timestamps, when timed and supported.
    pub seconds: Option<f64>,
}

/// A coded tensor's segments on the device, or a raw tensor.
pub enum GpuTensor<B> {
    Coded {
        params: TensorParams,
        segments: Vec<SegmentBuffers<B>>,
    },
    /// A tensor stored raw, padded to whole words; decoding copies it.
    Raw { buffer: B, len: u64 },
}

/// One segment's descriptors, tables, exceptions and planes on the device.
pub struct SegmentBuffers<B> {
    pub segment: Segment,
    pub blocks: B,
    pub tables: B,
    pub exceptions: B,
    pub head: B,
    pub rest: B,
}

impl<B> SegmentBuffers<B> {
    pub fn buffers(&self) -> [&B; 5] {
        [
            &self.blocks,
            &self.tables,
            &self.exceptions,
            &self.head,
            &self.rest,
        ]
    }
}

impl<B: DeviceMemory> DeviceTensor for GpuTensor<B> {
    fn decoded_bytes(&self) -> u64 {
        match self {
            GpuTensor::Coded { params, .. } => params.decoded_bytes(),
            GpuTensor::Raw { len, .. } => *len,
        }
    }

    fn resident_bytes(&self) -> u64 {
        match self {
            GpuTensor::Coded { segments, .. } => segments
                .iter()
                .flat_map(SegmentBuffers::buffers)
                .map(DeviceMemory::size)
                .sum(),
            GpuTensor::Raw { buffer, .. } => buffer.size(),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An output buffer: the device's, and the bytes asked for (the device's
/// is rounded up to whole words).
pub struct GpuBuffer<B> {
    buffer: B,
    len: u64,
}

impl<B> GpuBuffer<B> {
    /// `buffer`, of at least `len` bytes rounded up to whole words, as an
    /// output buffer of `len` bytes.
    pub(crate) fn new(buffer: B, len: u64) -> Self {
        GpuBuffer { buffer, len }
    }
}

impl<B: DeviceMemory> DeviceBuffer for GpuBuffer<B> {
    fn len(&self) -> u64 {
        self.len
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A backend for any [`GpuDevice`].
pub struct GpuBackend<D: GpuDevice> {
    device: Arc<D>,
}

impl<D: GpuDevice> GpuBackend<D> {
    pub fn from_device(device: D) -> Self {
        GpuBackend {
            device: Arc::new(device),
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device buffer behind a buffer this backend allocated, taken
    /// out of it (`None` for another backend's).
    pub fn into_buffer(buffer: Box<dyn DeviceBuffer>) -> Option<D::Buffer> {
        let buffer: Box<dyn Any> = buffer;
        buffer
            .downcast::<GpuBuffer<D::Buffer>>()
            .ok()
            .map(|buffer| buffer.buffer)
    }

    /// The device buffer behind a buffer this backend allocated.
    pub fn buffer(buffer: &dyn DeviceBuffer) -> Option<&D::Buffer> {
        buffer
            .as_any()
            .downcast_ref::<GpuBuffer<D::Buffer>>()
            .map(|b| &b.buffer)
    }

    fn output<'a>(&self, out: &'a dyn DeviceBuffer) -> Result<&'a D::Buffer> {
        Ok(&downcast::<GpuBuffer<D::Buffer>>(self.name(), out.as_any())?.buffer)
    }

    fn upload_segment(
        &self,
        tensor: &EncodedView,
        segment: Segment,
    ) -> Result<SegmentBuffers<D::Buffer>> {
        let device = &self.device;
        let words = |words: &[u32]| -> Vec<u8> {
            // An empty list still gets a word: bindings may not be empty.
            let words = if words.is_empty() { &[0][..] } else { words };
            bytemuck::cast_slice(words).to_vec()
        };
        let plane = |bytes: &[u8]| words(&layout::padded_words(bytes));
        let limit = self.device.limits().max_binding_bytes;
        let head = plane(&tensor.head[segment.head_bytes.clone()]);
        let rest = plane(&tensor.rest[segment.rest_bytes.clone()]);
        for (what, bytes) in [("head plane", &head), ("rest plane", &rest)] {
            if bytes.len() as u64 > limit {
                return Err(backend_error(
                    self.name(),
                    format!(
                        "a {what} segment of {} bytes exceeds the device's {limit}-byte bindings",
                        bytes.len()
                    ),
                ));
            }
        }
        Ok(SegmentBuffers {
            blocks: device.upload(
                "block descriptors",
                bytemuck::cast_slice(&segment.descriptors),
            )?,
            tables: device.upload("code tables", &words(&segment.tables))?,
            exceptions: device.upload("sync exceptions", &words(&segment.exceptions))?,
            head: device.upload("the head plane", &head)?,
            rest: device.upload("the rest plane", &rest)?,
            segment,
        })
    }
}

impl<D: GpuDevice> Backend for GpuBackend<D> {
    fn name(&self) -> &'static str {
        self.device.name()
    }

    fn info(&self) -> BackendInfo {
        self.device.info()
    }

    fn output_alignment(&self) -> u64 {
        OUTPUT_ALIGNMENT
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn upload(&self, tensor: &EncodedView, index: &BlockIndex) -> Result<Box<dyn DeviceTensor>> {
        let segments = layout::segments(tensor, index, self.device.limits())?
            .into_iter()
            .map(|segment| self.upload_segment(tensor, segment))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(GpuTensor::Coded {
            params: tensor.params.clone(),
            segments,
        }))
    }

    fn upload_raw(&self, bytes: &[u8]) -> Result<Box<dyn DeviceTensor>> {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(4).max(4), 0);
        Ok(Box::new(GpuTensor::Raw {
            buffer: self.device.upload("a raw tensor", &padded)?,
            len: bytes.len() as u64,
        }))
    }

    fn alloc(&self, bytes: u64) -> Result<Box<dyn DeviceBuffer>> {
        let buffer = self.device.alloc(
            bytes
                .next_multiple_of(OUTPUT_ALIGNMENT)
                .max(OUTPUT_ALIGNMENT),
        )?;
        Ok(Box::new(GpuBuffer::new(buffer, bytes)))
    }

    fn decode(&self, jobs: &[DecodeJob], out: &dyn DeviceBuffer) -> Result<()> {
        self.decode_async(jobs, out)?.wait()
    }

    fn decode_async(
        &self,
        jobs: &[DecodeJob],
        out: &dyn DeviceBuffer,
    ) -> Result<Box<dyn PendingDecode>> {
        check_jobs(self.name(), jobs, out.len(), OUTPUT_ALIGNMENT)?;
        let plan = LaunchPlan::new(self.name(), jobs, out.len())?;
        let out = self.output(out)?;
        let launch = self.device.prepare(&plan, out, false)?;
        let submission = self.device.submit(&plan, &launch, out, false)?;
        Ok(Box::new(GpuPending {
            device: self.device.clone(),
            origins: plan.origins(),
            launch,
            submission,
        }))
    }

    fn decodes_asynchronously(&self) -> bool {
        true
    }

    fn download(&self, buffer: &dyn DeviceBuffer, offset: u64, out: &mut [u8]) -> Result<()> {
        check_download(self.name(), buffer.len(), offset, out.len())?;
        let buffer = self.output(buffer)?;
        if out.is_empty() {
            return Ok(());
        }
        self.device.download(buffer, offset, out)
    }

    /// Times whole decodes, raw tensors' copies included, on the device's
    /// clock where it has one.
    fn time_decode(
        &self,
        jobs: &[DecodeJob],
        out: &dyn DeviceBuffer,
        repeats: usize,
    ) -> Result<Timings> {
        check_jobs(self.name(), jobs, out.len(), OUTPUT_ALIGNMENT)?;
        let plan = LaunchPlan::new(self.name(), jobs, out.len())?;
        let out = self.output(out)?;
        let origins = plan.origins();
        let launch = self.device.prepare(&plan, out, true)?;
        let mut device_seconds = Vec::with_capacity(repeats);
        let mut wall_seconds = Vec::with_capacity(repeats);
        // A warm-up run first.
        for run in 0..=repeats {
            let started = Instant::now();
            let submission = self.device.submit(&plan, &launch, out, true)?;
            let finished = self.device.finish(&launch, &submission)?;
            let wall = started.elapsed().as_secs_f64();
            check_status(self.name(), &origins, &finished.status)?;
            if run > 0 {
                wall_seconds.push(wall);
                device_seconds.extend(finished.seconds.filter(|&s| s > 0.0));
            }
        }
        // One clock for every run: the wall clock unless the device timed
        // them all.
        Ok(if device_seconds.len() == wall_seconds.len() {
            Timings {
                seconds: device_seconds,
                clock: self.device.clock(),
            }
        } else {
            Timings {
                seconds: wall_seconds,
                clock: Clock::Wall,
            }
        })
    }

    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Timings> {
        self.device.time_copy(bytes, repeats)
    }
}

/// A decode running on a GPU. Waiting for it checks every block's status.
pub struct GpuPending<D: GpuDevice> {
    device: Arc<D>,
    launch: D::Launch,
    submission: D::Submission,
    origins: Vec<BlockOrigin>,
}

impl<D: GpuDevice> GpuPending<D> {
    /// The device's handle of the submitted work (a CUDA event, say, that
    /// another stream can wait on).
    pub fn submission(&self) -> &D::Submission {
        &self.submission
    }
}

impl<D: GpuDevice> PendingDecode for GpuPending<D> {
    fn wait(self: Box<Self>) -> Result<()> {
        let finished = self.device.finish(&self.launch, &self.submission)?;
        check_status(self.device.name(), &self.origins, &finished.status)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
