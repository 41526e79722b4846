//! A decode planned for a GPU: which raw tensors are copied where, one
//! dispatch record per segment of every coded tensor, and the work list
//! that gives each workgroup its (record, block) pair. The wgpu and CUDA
//! backends launch the same plan, and the tests feed it to the CUDA kernel
//! executed on the CPU, so the host side of every launch is one piece of
//! code.

use crate::backend::{DecodeJob, downcast, overrun_error};
use crate::codec::CodecError;
use crate::error::{Error, Result};

use super::layout::{DispatchParams, DispatchRecord, status_problem};
use super::{GpuTensor, SegmentBuffers};

/// A raw tensor's bytes, copied into the output.
pub struct RawCopy<'a, B> {
    pub source: &'a B,
    /// Byte offset in the output.
    pub offset: u64,
    /// Bytes to copy: the tensor's length rounded up to whole words (jobs
    /// may write zeros up to the next multiple of 4).
    pub bytes: u64,
}

/// One segment of a coded tensor, decoded by one record's blocks.
pub struct PlannedDispatch<'a, B> {
    pub segment: &'a SegmentBuffers<B>,
    /// The job the segment belongs to.
    pub job: usize,
    /// Byte offset in the output of the segment's first element, and the
    /// bytes it decodes.
    pub output_offset: u64,
    pub output_bytes: u64,
    /// Its parameters, `status_base` filled in.
    pub params: DispatchParams,
    /// The tensor's block number of the segment's first block.
    pub first_block: u64,
}

/// Everything one decode launches.
pub struct LaunchPlan<'a, B> {
    pub copies: Vec<RawCopy<'a, B>>,
    pub dispatches: Vec<PlannedDispatch<'a, B>>,
    /// Workgroups (thread blocks) in all: one per block of every dispatch.
    pub blocks: u32,
}

/// Where a workgroup's block comes from, for naming it in an error.
#[derive(Clone, Copy, Debug)]
pub struct BlockOrigin {
    /// The workgroup (status word) of the dispatch's first block.
    first_item: u32,
    job: usize,
    first_block: u64,
    block_elements: u64,
    elements: u64,
}

impl<'a, B: 'static> LaunchPlan<'a, B> {
    /// Plans `jobs`, whose tensors must be `backend`'s [`GpuTensor`]s, into
    /// an output of `output_len` bytes. [`crate::backend::check_jobs`]
    /// checks the jobs' ranges first; the plan still refuses, by itself,
    /// any copy or dispatch that would write past the output, as the
    /// kernels write where a record points.
    pub fn new(backend: &str, jobs: &'a [DecodeJob<'a>], output_len: u64) -> Result<Self> {
        let mut plan = LaunchPlan {
            copies: Vec::new(),
            dispatches: Vec::new(),
            blocks: 0,
        };
        let mut blocks = 0u64;
        for (job_number, job) in jobs.iter().enumerate() {
            match downcast::<GpuTensor<B>>(backend, job.tensor.as_any())? {
                GpuTensor::Raw { buffer, len } => {
                    if *len > 0 {
                        plan.copies.push(RawCopy {
                            source: buffer,
                            offset: job.offset,
                            bytes: len.next_multiple_of(4),
                        });
                    }
                }
                GpuTensor::Coded { params, segments } => {
                    let width = params.kind().width_bytes() as u64;
                    for segment in segments {
                        let mut dispatch_params = segment.segment.dispatch_params(params);
                        dispatch_params.status_base =
                            u32::try_from(blocks).map_err(|_| too_many_blocks(backend))?;
                        plan.dispatches.push(PlannedDispatch {
                            segment,
                            job: job_number,
                            output_offset: job.offset + segment.segment.first_element * width,
                            output_bytes: segment.segment.output_bytes(params),
                            params: dispatch_params,
                            first_block: segment.segment.blocks.start as u64,
                        });
                        blocks += segment.segment.descriptors.len() as u64;
                    }
                }
            }
        }
        plan.blocks = u32::try_from(blocks).map_err(|_| too_many_blocks(backend))?;
        // Writes are of whole words, and an output buffer holds its length
        // rounded up to them.
        let limit = output_len.next_multiple_of(4);
        let writes = (plan.copies.iter().map(|c| (c.offset, c.bytes))).chain(
            plan.dispatches
                .iter()
                .map(|d| (d.output_offset, d.output_bytes)),
        );
        for (offset, bytes) in writes {
            if offset.checked_add(bytes).is_none_or(|end| end > limit) {
                return Err(overrun_error(backend, bytes, offset, output_len));
            }
        }
        Ok(plan)
    }

    /// The (record, block) pair of every workgroup, flattened.
    pub fn work_list(&self) -> Vec<u32> {
        let mut work = Vec::with_capacity(2 * self.blocks as usize);
        for (record, dispatch) in self.dispatches.iter().enumerate() {
            for block in 0..dispatch.params.block_count {
                work.extend_from_slice(&[record as u32, block]);
            }
        }
        work
    }

    /// The CUDA kernel's records: each dispatch's parameters with the
    /// addresses of its buffers, as `address` gives them, and of its first
    /// output byte in an output buffer at `output`.
    pub fn records(&self, address: impl Fn(&B) -> u64, output: u64) -> Vec<DispatchRecord> {
        self.dispatches
            .iter()
            .map(|dispatch| {
                let segment = dispatch.segment;
                DispatchRecord {
                    params: dispatch.params,
                    blocks: address(&segment.blocks),
                    tables: address(&segment.tables),
                    exceptions: address(&segment.exceptions),
                    head: address(&segment.head),
                    rest: address(&segment.rest),
                    output: output + dispatch.output_offset,
                }
            })
            .collect()
    }

    /// Where every workgroup's block comes from.
    pub(crate) fn origins(&self) -> Vec<BlockOrigin> {
        self.dispatches
            .iter()
            .map(|dispatch| {
                let segment = &dispatch.segment.segment;
                BlockOrigin {
                    first_item: dispatch.params.status_base,
                    job: dispatch.job,
                    first_block: dispatch.first_block,
                    block_elements: segment.descriptors.first().map_or(0, |d| d.elements as u64),
                    elements: segment.elements,
                }
            })
            .collect()
    }
}

fn too_many_blocks(backend: &str) -> Error {
    Error::Backend {
        backend: backend.to_string(),
        message: "more than 2^32 blocks in one decode".to_string(),
    }
}

/// The error of the first block whose status word reports a problem, if
/// any: the job, the tensor's block and the problem, as the CPU decoder
/// reports it.
pub(crate) fn check_status(backend: &str, origins: &[BlockOrigin], status: &[u32]) -> Result<()> {
    let Some(item) = status.iter().position(|&word| word != 0) else {
        return Ok(());
    };
    let origin = origins[origins.partition_point(|o| o.first_item as usize <= item) - 1];
    let offset = (item - origin.first_item as usize) as u64;
    let block_start = offset * origin.block_elements;
    let elements = origin
        .block_elements
        .min(origin.elements.saturating_sub(block_start));
    match status_problem(status[item], elements) {
        Some(Ok(problem)) => Err(Error::CorruptJob {
            backend: backend.to_string(),
            job: origin.job,
            source: CodecError::CorruptStream {
                block: (origin.first_block + offset) as usize,
                problem,
            },
        }),
        Some(Err(word)) => Err(Error::Backend {
            backend: backend.to_string(),
            message: format!(
                "the decoder reported status {word:#x} for block {} of job {}",
                origin.first_block + offset,
                origin.job
            ),
        }),
        None => Ok(()),
    }
}
