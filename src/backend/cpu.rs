//! The CPU backend: the reference decoder behind the backend contract.
//! "Device" memory is host memory.

use std::any::Any;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::codec::{self, BlockIndex, EncodedView, TensorParams};
use crate::error::{Error, Result};

use super::{
    Backend, BackendInfo, Clock, DecodeJob, DeviceBuffer, DeviceTensor, Timings, backend_error,
    check_download, check_jobs, downcast, overrun_error,
};

const NAME: &str = "cpu";

/// The CPU decoder behind the backend contract. It checks every chunk's
/// sync metadata, so that it accepts exactly what the GPU backends accept
/// ([`codec::decode::decode_blocks`]).
#[derive(Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }

    /// Decodes `jobs` into `out`, memory the caller owns (a framework's
    /// tensor), as [`Backend::decode`] does into a buffer of this
    /// backend's: each job's tensor lands at its offset, checked first
    /// against `out`'s length and the other jobs.
    pub fn decode_into_host(&self, jobs: &[DecodeJob], out: &mut [u8]) -> Result<()> {
        check_jobs(NAME, jobs, out.len() as u64, self.output_alignment())?;
        // Each job's part of `out`, cut in the order of the offsets. Cut
        // again here, whatever `check_jobs` found, so that no plan can make
        // this backend write outside `out` or two jobs share bytes.
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&number| jobs[number].offset);
        let out_len = out.len() as u64;
        let mut uncut = out;
        let mut cut_to = 0u64;
        let mut parts = Vec::with_capacity(jobs.len());
        for number in order {
            let job = &jobs[number];
            let tensor = downcast::<CpuTensor>(NAME, job.tensor.as_any())?;
            let len = tensor.decoded_bytes();
            let cut = job
                .offset
                .checked_sub(cut_to)
                .and_then(|gap| usize::try_from(gap).ok())
                .and_then(|gap| {
                    std::mem::take(&mut uncut)
                        .get_mut(gap..)?
                        .split_at_mut_checked(usize::try_from(len).ok()?)
                });
            let Some((part, rest)) = cut else {
                return Err(overrun_error(NAME, len, job.offset, out_len));
            };
            uncut = rest;
            cut_to = job.offset + len;
            parts.push((number, tensor, part));
        }
        // All jobs at once, each tensor's blocks in parallel too: a model's
        // small tensors (biases, norms, a block or two each) would
        // otherwise leave all but one core idle. The error is the first
        // job's, whatever the threads' timing.
        parts
            .into_par_iter()
            .filter_map(|(number, tensor, out)| {
                decode_tensor(tensor, out)
                    .err()
                    .map(|error| (number, error))
            })
            .min_by_key(|(number, _)| *number)
            .map_or(Ok(()), |(number, error)| Err(corrupt(number)(error)))
    }
}

/// Decodes one tensor into `out`, exactly its decoded bytes.
fn decode_tensor(tensor: &CpuTensor, out: &mut [u8]) -> std::result::Result<(), codec::CodecError> {
    match tensor {
        CpuTensor::Coded {
            params,
            head,
            rest,
            index_bytes,
            index,
        } => {
            let view = EncodedView {
                params,
                head,
                rest,
                index: index_bytes,
            };
            codec::decode::decode_blocks(&view, index, 0..index.blocks.len(), out)
        }
        CpuTensor::Raw(raw) => {
            out.copy_from_slice(raw);
            Ok(())
        }
    }
}

fn corrupt(job: usize) -> impl FnOnce(codec::CodecError) -> Error {
    move |source| Error::CorruptJob {
        backend: NAME.to_string(),
        job,
        source,
    }
}

enum CpuTensor {
    Coded {
        params: TensorParams,
        head: Vec<u8>,
        rest: Vec<u8>,
        index_bytes: Vec<u8>,
        index: BlockIndex,
    },
    Raw(Vec<u8>),
}

impl DeviceTensor for CpuTensor {
    fn decoded_bytes(&self) -> u64 {
        match self {
            CpuTensor::Coded { params, .. } => params.decoded_bytes(),
            CpuTensor::Raw(bytes) => bytes.len() as u64,
        }
    }

    fn resident_bytes(&self) -> u64 {
        match self {
            CpuTensor::Coded {
                head,
                rest,
                index_bytes,
                ..
            } => (head.len() + rest.len() + index_bytes.len()) as u64,
            CpuTensor::Raw(bytes) => bytes.len() as u64,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct CpuBuffer {
    bytes: Mutex<Vec<u8>>,
    len: u64,
}

impl DeviceBuffer for CpuBuffer {
    fn len(&self) -> u64 {
        self.len
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: NAME,
            device: format!("{} threads", rayon::current_num_threads()),
            driver: "reference decoder".to_string(),
            hardware_gpu: false,
            limits: Default::default(),
        }
    }

    fn output_alignment(&self) -> u64 {
        1
    }

    fn upload(&self, tensor: &EncodedView, index: &BlockIndex) -> Result<Box<dyn DeviceTensor>> {
        Ok(Box::new(CpuTensor::Coded {
            params: tensor.params.clone(),
            head: tensor.head.to_vec(),
            rest: tensor.rest.to_vec(),
            index_bytes: tensor.index.to_vec(),
            index: index.clone(),
        }))
    }

    fn upload_raw(&self, bytes: &[u8]) -> Result<Box<dyn DeviceTensor>> {
        Ok(Box::new(CpuTensor::Raw(bytes.to_vec())))
    }

    fn alloc(&self, bytes: u64) -> Result<Box<dyn DeviceBuffer>> {
        let mut buffer = Vec::new();
        buffer
            .try_reserve_exact(bytes as usize)
            .map_err(|_| backend_error(NAME, format!("cannot allocate {bytes} bytes")))?;
        buffer.resize(bytes as usize, 0);
        Ok(Box::new(CpuBuffer {
            bytes: Mutex::new(buffer),
            len: bytes,
        }))
    }

    fn decode(&self, jobs: &[DecodeJob], out: &dyn DeviceBuffer) -> Result<()> {
        let out = downcast::<CpuBuffer>(NAME, out.as_any())?;
        let mut bytes = out.bytes.lock().unwrap_or_else(|e| e.into_inner());
        self.decode_into_host(jobs, &mut bytes)
    }

    fn decode_to_host(
        &self,
        tensor: &EncodedView,
        index: &BlockIndex,
        out: &mut [u8],
    ) -> Result<()> {
        let blocks = 0..index.blocks.len();
        codec::decode::decode_blocks(tensor, index, blocks, out).map_err(corrupt(0))
    }

    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Timings> {
        use rayon::prelude::*;
        const PIECE: usize = 1 << 20;
        let source = vec![0x5Au8; bytes as usize];
        let mut target = vec![0u8; bytes as usize];
        let mut copy = || {
            let started = std::time::Instant::now();
            target
                .par_chunks_mut(PIECE)
                .zip(source.par_chunks(PIECE))
                .for_each(|(to, from)| to.copy_from_slice(from));
            std::hint::black_box(&target);
            started.elapsed().as_secs_f64()
        };
        copy();
        Ok(Timings {
            seconds: (0..repeats).map(|_| copy()).collect(),
            clock: Clock::Wall,
        })
    }

    fn download(&self, buffer: &dyn DeviceBuffer, offset: u64, out: &mut [u8]) -> Result<()> {
        let buffer = downcast::<CpuBuffer>(NAME, buffer.as_any())?;
        let bytes = buffer.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let end = check_download(NAME, buffer.len, offset, out.len())?;
        out.copy_from_slice(&bytes[offset as usize..end as usize]);
        Ok(())
    }
}
