//! What `kernels/decode.cu` would cost on a GPU, estimated without one.
//!
//! NVRTC compiles the kernel to a CUBIN with line information and nvdisasm
//! prints its SASS, each instruction with the source line it came from and
//! the lines it was inlined at. Each instruction belongs to the innermost
//! *region* around its line — the braces of an `ECF_MODEL_REGION()` — and
//! to a pipe. The CPU execution of the kernel (`kernel_on_cpu.rs`) counts
//! how often a warp runs each region: once per distinct execution among its
//! 32 threads, so divergence costs the whole warp. Instructions weighted by
//! those counts are what the GPU issues; the same execution also counts
//! shared-memory wavefronts, L1 lines, DRAM sectors, round trips to memory
//! and barriers. Against a fixed table of machines that gives a time for
//! each limit, and the largest is the estimate and what binds.
//!
//! The model holds only if every loop's instructions are weighed by its
//! iterations: a loop is either fully unrolled by the compiler (`#pragma
//! unroll`, no region inside: its copies are weighed by the region around
//! it), or kept rolled (`#pragma unroll 1`) with a region as its body. The
//! source is checked for that before anything is weighed.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use super::harness::Skip;
use super::kernel_on_cpu::KernelModel;

/// What a pipe does per SM per clock, in lanes (threads), on compute
/// capability 8.0 and 9.0: the CUDA C++ Programming Guide's throughput
/// table ("Arithmetic Instructions").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pipe {
    /// 32-bit integer add, compare, min/max, shift, logic, select, move.
    Integer,
    /// 32-bit integer multiply and multiply-add (the compiler also uses
    /// `IMAD` for moves and adds, to spread work over both pipes).
    Multiply,
    /// 32-bit floating point add, multiply, fused multiply-add.
    Float,
    /// Bit reverse, population count, leading zeros, conversions.
    Conversion,
    /// Warp shuffles.
    Shuffle,
    /// Loads, stores and atomics, global and shared: their traffic is
    /// counted apart.
    Memory,
    /// Uniform datapath instructions: one per warp, not per lane.
    Uniform,
    /// Branches, barriers, reconvergence, special registers, constants.
    Control,
}

impl Pipe {
    pub const ALL: [Pipe; 8] = [
        Pipe::Integer,
        Pipe::Multiply,
        Pipe::Float,
        Pipe::Conversion,
        Pipe::Shuffle,
        Pipe::Memory,
        Pipe::Uniform,
        Pipe::Control,
    ];

    /// Lanes per SM per clock; `None` where only the issue limit binds.
    pub fn lanes_per_clock(self) -> Option<f64> {
        match self {
            Pipe::Integer | Pipe::Multiply => Some(64.0),
            Pipe::Float => Some(128.0),
            Pipe::Conversion => Some(16.0),
            // The MIO queue hands the load/store pipe one instruction per
            // SM per clock (NVIDIA's account of its memory pipeline).
            Pipe::Shuffle | Pipe::Memory => Some(32.0),
            Pipe::Uniform | Pipe::Control => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pipe::Integer => "integer",
            Pipe::Multiply => "multiply",
            Pipe::Float => "float",
            Pipe::Conversion => "conversion",
            Pipe::Shuffle => "shuffle",
            Pipe::Memory => "load-store",
            Pipe::Uniform => "uniform",
            Pipe::Control => "control",
        }
    }

    /// The pipe of a SASS opcode (its name before the first `.`).
    pub fn of(opcode: &str) -> Pipe {
        match opcode {
            "IMAD" | "IMUL" | "IDP" | "IMADSP" => Pipe::Multiply,
            "FADD" | "FMUL" | "FFMA" | "FADD32I" | "FMUL32I" | "FFMA32I" | "HADD2" | "HMUL2"
            | "HFMA2" => Pipe::Float,
            "FLO" | "POPC" | "BREV" | "MUFU" | "I2F" | "F2I" | "F2F" | "I2I" | "FRND" | "I2IP"
            | "F2FP" => Pipe::Conversion,
            "SHFL" => Pipe::Shuffle,
            "LDG" | "STG" | "LD" | "ST" | "LDS" | "STS" | "LDL" | "STL" | "ATOM" | "ATOMG"
            | "ATOMS" | "RED" | "LDGSTS" | "LDSM" | "MATCH" => Pipe::Memory,
            "BRA" | "BRX" | "JMP" | "JMX" | "EXIT" | "RET" | "CALL" | "BAR" | "BSSY" | "BSYNC"
            | "WARPSYNC" | "NOP" | "YIELD" | "DEPBAR" | "S2R" | "CS2R" | "ERRBAR" | "MEMBAR"
            | "CCTL" | "NANOSLEEP" | "BPT" | "KILL" | "LDC" | "BMOV" | "WARPGROUP" | "ACQBULK"
            | "PREEXIT" | "ELECT" | "ENDCOLLECTIVE" => Pipe::Control,
            uniform if uniform.starts_with('U') || uniform == "S2UR" || uniform == "R2UR" => {
                Pipe::Uniform
            }
            _ => Pipe::Integer,
        }
    }
}

/// A GPU the estimate is made for. One table, stated in BENCHMARKS.md.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    pub name: &'static str,
    pub sms: f64,
    pub clock_hz: f64,
    /// DRAM bytes (read and written) per second that a device-to-device
    /// copy achieves.
    pub dram_bytes_per_second: f64,
    pub dram_latency_cycles: f64,
    /// An L1 hit's latency (an assumption: ≈ 33 cycles measured on Hopper
    /// and Ampere by microbenchmarks).
    pub l1_latency_cycles: f64,
    /// Warp-instructions an SM issues per clock, at most.
    pub issue_per_clock: f64,
    /// L1 wavefronts per SM per clock: shared-memory wavefronts, and those
    /// of global requests, share L1's data path.
    pub wavefronts_per_clock: f64,
    /// What a barrier costs the block that meets at it, in cycles (an
    /// assumption: the warps' arrival and release).
    pub barrier_cycles: f64,
    /// Resident warps an SM holds at most.
    pub warps_per_sm: f64,
}

pub const H100: Machine = Machine {
    name: "h100",
    sms: 132.0,
    clock_hz: 1.755e9,
    dram_bytes_per_second: 2.9e12,
    dram_latency_cycles: 600.0,
    l1_latency_cycles: 33.0,
    issue_per_clock: 4.0,
    wavefronts_per_clock: 1.0,
    barrier_cycles: 24.0,
    warps_per_sm: 64.0,
};

pub const H200: Machine = Machine {
    name: "h200",
    dram_bytes_per_second: 4.2e12,
    ..H100
};

/// One SASS instruction: its opcode, pipe, whether a predicate guards it,
/// its source lines, innermost first (the line, then the lines it was
/// inlined at), the registers it writes and reads, and where a branch goes
/// (an index into the listing), and whether it always does.
#[derive(Clone, Debug)]
pub struct Instruction {
    pub opcode: String,
    pub pipe: Pipe,
    pub predicated: bool,
    pub lines: Vec<u32>,
    pub writes: Vec<u32>,
    pub reads: Vec<u32>,
    pub target: Option<usize>,
    pub jump: Option<usize>,
}

impl Instruction {
    /// A load from global memory, whose latency a warp may wait on.
    fn is_global_load(&self) -> bool {
        let base = self.opcode.split('.').next().unwrap_or_default();
        base == "LDG" || base == "LD"
    }
}

/// The kernel as NVRTC compiled it for one architecture.
pub struct Sass {
    pub architecture: String,
    pub instructions: Vec<Instruction>,
    pub registers: u32,
    pub shared_bytes: u32,
}

/// nvdisasm, or why it cannot run: `ECF_NVDISASM` names it, else PATH.
#[cfg(feature = "cuda")]
fn nvdisasm() -> Result<std::path::PathBuf, Skip> {
    use super::harness::absent;
    use std::path::PathBuf;
    use std::process::Command;
    let program = std::env::var_os("ECF_NVDISASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nvdisasm"));
    match Command::new(&program).arg("--version").output() {
        Ok(output) if output.status.success() => Ok(program),
        Ok(output) => Err(absent(
            "nvdisasm",
            format!(
                "{} --version failed: {}",
                program.display(),
                String::from_utf8_lossy(&output.stderr)
            ),
        )),
        Err(e) => Err(absent(
            "nvdisasm",
            format!(
                "cannot run {} ({e}); pip install nvidia-cuda-nvdisasm and set ECF_NVDISASM",
                program.display()
            ),
        )),
    }
}

/// The kernel's SASS for `architecture` (`sm_90`), or why it cannot be
/// had here: NVRTC and nvdisasm are needed, no GPU.
#[cfg(feature = "cuda")]
pub fn sass(architecture: &str) -> Result<Sass, Skip> {
    use super::harness::absent;
    use ecfloat::backend::cuda;
    use std::process::Command;
    if !cuda::nvrtc_present() {
        return Err(absent("nvrtc", "libnvrtc.so.12 cannot be loaded"));
    }
    let disassembler = nvdisasm()?;
    let kernel = cuda::compile_kernel(architecture).unwrap_or_else(|e| panic!("{e}"));
    let (registers, shared_bytes) = cuda::resource_usage(&kernel.log)
        .unwrap_or_else(|| panic!("{architecture}: ptxas reported nothing:\n{}", kernel.log));
    let directory = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel_cost");
    std::fs::create_dir_all(&directory).unwrap();
    let cubin = directory.join(format!(
        "decode-{architecture}-{}.cubin",
        std::process::id()
    ));
    std::fs::write(&cubin, &kernel.image).unwrap();
    let output = Command::new(&disassembler)
        .args(["--print-line-info-inline", "--print-code"])
        .arg(&cubin)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&cubin);
    assert!(
        output.status.success(),
        "nvdisasm failed on the {architecture} CUBIN: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let instructions = parse_sass(&String::from_utf8_lossy(&output.stdout));
    assert!(
        instructions.len() > 100 && instructions.iter().any(|i| !i.lines.is_empty()),
        "nvdisasm printed no instructions with line information for {architecture}"
    );
    Ok(Sass {
        architecture: architecture.to_string(),
        instructions,
        registers,
        shared_bytes,
    })
}

#[cfg(not(feature = "cuda"))]
pub fn sass(_architecture: &str) -> Result<Sass, Skip> {
    Err(Skip("the cuda feature is not compiled in".to_string()))
}

/// The instructions of nvdisasm's `--print-line-info-inline` listing. A
/// line comment holds until the next: `//## File "…", line N inlined at
/// "…", line M` lines, innermost first, end with a `//## File "…", line K`
/// without `inlined at`.
pub fn parse_sass(listing: &str) -> Vec<Instruction> {
    let line_of = |text: &str| -> Option<u32> {
        let after = &text[text.find(", line ")? + ", line ".len()..];
        after
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let mut instructions = Vec::new();
    let mut lines: Vec<u32> = Vec::new();
    let mut chain: Vec<u32> = Vec::new();
    let mut labels: BTreeMap<String, usize> = BTreeMap::new();
    let mut jumps: Vec<(usize, String)> = Vec::new();
    for text in listing.lines() {
        let text = text.trim();
        if let Some(comment) = text.strip_prefix("//## File ") {
            if let Some(line) = line_of(comment) {
                chain.push(line);
            }
            if !comment.contains("inlined at") {
                lines = std::mem::take(&mut chain);
            }
            continue;
        }
        if let Some(label) = text.strip_suffix(':').filter(|l| l.starts_with(".L")) {
            labels.insert(label.to_string(), instructions.len());
            continue;
        }
        let Some(code) = text
            .strip_prefix("/*")
            .and_then(|rest| rest.split_once("*/"))
            .map(|(_, code)| code.trim().trim_end_matches(';').trim())
        else {
            continue;
        };
        let (mut head, mut operands) = code.split_once(char::is_whitespace).unwrap_or((code, ""));
        let mut predicated = false;
        if let Some(guard) = head.strip_prefix('@') {
            predicated = guard != "PT";
            (head, operands) = operands
                .trim()
                .split_once(char::is_whitespace)
                .unwrap_or((operands.trim(), ""));
        }
        let opcode = head.to_string();
        let base = opcode.split('.').next().unwrap_or_default();
        let operands: Vec<&str> = operands.split(',').map(str::trim).collect();
        let stores = [
            "ST", "STG", "STS", "STL", "RED", "BRA", "EXIT", "BAR", "BSYNC", "BSSY",
        ];
        let (writes, reads) = if stores.contains(&base) || operands.is_empty() {
            (
                Vec::new(),
                operands.iter().flat_map(|o| registers(o)).collect(),
            )
        } else {
            let mut writes = registers(operands[0]);
            // A load's destination spans as many registers as it loads.
            if base == "LDG" || base == "LD" || base == "LDS" {
                let width = if opcode.contains(".128") {
                    4
                } else if opcode.contains(".64") {
                    2
                } else {
                    1
                };
                if let Some(&first) = writes.first() {
                    writes = (first..first + width).collect();
                }
            }
            (
                writes,
                operands[1..].iter().flat_map(|o| registers(o)).collect(),
            )
        };
        if base == "BRA"
            && let Some(label) = operands.first().and_then(|o| o.split('`').nth(1))
        {
            let label = label.trim_start_matches('(').trim_end_matches(')');
            jumps.push((instructions.len(), label.to_string()));
        }
        instructions.push(Instruction {
            pipe: Pipe::of(base),
            opcode,
            predicated,
            lines: lines.clone(),
            writes,
            reads,
            target: None,
            jump: None,
        });
    }
    for (index, label) in jumps {
        let target = labels.get(&label).copied();
        instructions[index].target = target;
        if !instructions[index].predicated {
            instructions[index].jump = target;
        }
    }
    instructions
}

/// The general registers an operand names: `R12`, `R4.64` (two), within
/// an address; not `RZ`, uniform (`UR`) or special (`SR_`) registers.
fn registers(operand: &str) -> Vec<u32> {
    let bytes = operand.as_bytes();
    let mut found = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        let starts = bytes[index] == b'R'
            && (index == 0
                || !bytes[index - 1].is_ascii_alphanumeric() && bytes[index - 1] != b'_');
        if !starts {
            index += 1;
            continue;
        }
        let digits = operand[index + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        if digits == 0 {
            index += 1;
            continue;
        }
        let register: u32 = operand[index + 1..index + 1 + digits].parse().unwrap_or(0);
        index += 1 + digits;
        found.push(register);
        if operand[index..].starts_with(".64") {
            found.push(register + 1);
        }
    }
    found
}

/// A region of the kernel: the braces around an `ECF_MODEL_REGION()`,
/// named by the line of that marker (which is what the CPU execution
/// counts by).
#[derive(Clone, Debug)]
pub struct Region {
    pub marker: u32,
    pub lines: RangeInclusive<u32>,
    /// The copies of it the compiler makes by unrolling the loops around
    /// it: the CPU execution counts the runs of all of them together.
    pub copies: u32,
}

/// The kernel's regions, after checking that every loop is either fully
/// unrolled without a region inside or kept rolled with a region as its
/// body.
pub fn regions(source: &str) -> Result<Vec<Region>, String> {
    let code = strip_comments(source);
    let lines: Vec<&str> = code.lines().collect();
    // Open braces: (line, whether a marker named them, marker line).
    let mut open: Vec<(u32, Option<u32>)> = Vec::new();
    let mut regions = Vec::new();
    for (index, text) in lines.iter().enumerate() {
        let number = index as u32 + 1;
        if text.trim_start().starts_with('#') {
            continue;
        }
        let mut rest = *text;
        while !rest.is_empty() {
            let next = rest.find(['{', '}', 'E']).unwrap_or(rest.len());
            rest = &rest[next..];
            if rest.starts_with('{') {
                open.push((number, None));
                rest = &rest[1..];
            } else if rest.starts_with('}') {
                let (first, marker) = open
                    .pop()
                    .ok_or_else(|| format!("decode.cu:{number}: unbalanced `}}`"))?;
                if let Some(marker) = marker {
                    regions.push(Region {
                        marker,
                        lines: statement_start(&lines, first)..=number,
                        copies: 1,
                    });
                }
                rest = &rest[1..];
            } else if rest.starts_with("ECF_MODEL_REGION()") {
                let top = open.last_mut().ok_or_else(|| {
                    format!("decode.cu:{number}: ECF_MODEL_REGION() outside any braces")
                })?;
                if top.1.is_some() {
                    return Err(format!(
                        "decode.cu:{number}: a second ECF_MODEL_REGION() in the braces of line {}",
                        top.0
                    ));
                }
                top.1 = Some(number);
                rest = &rest["ECF_MODEL_REGION()".len()..];
            } else if !rest.is_empty() {
                rest = &rest[1..];
            }
        }
    }
    check_loops(&lines, &mut regions)?;
    regions.sort_by_key(|r| r.marker);
    Ok(regions)
}

/// The first line of the statement whose last line is `line`: a loop's or
/// a function's head may take several lines before its brace.
fn statement_start(lines: &[&str], line: u32) -> u32 {
    let mut start = line;
    while start > 1 {
        let previous = lines[start as usize - 2].trim();
        if previous.is_empty()
            || previous.starts_with('#')
            || previous.ends_with([';', '{', '}', ':'])
        {
            break;
        }
        start -= 1;
    }
    start
}

/// Every `for`, `while` and `do` must follow `#pragma unroll 1` (and open
/// a region as its body's first statement) or `#pragma unroll`: then the
/// compiler makes a copy of its body per iteration, so where a region is
/// inside, its iterations must be counted from its head
/// (`unrolled_iterations`), and the region has that many copies.
fn check_loops(lines: &[&str], regions: &mut [Region]) -> Result<(), String> {
    let is_loop = |text: &str| {
        let text = text.trim_start();
        ["for (", "while (", "do {"]
            .iter()
            .any(|start| text.starts_with(start))
            && !text.starts_with("while (false)")
    };
    for (index, text) in lines.iter().enumerate() {
        let number = index as u32 + 1;
        if !is_loop(text) || text.trim_start().starts_with('}') {
            continue;
        }
        let pragma = lines[..index]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim())
            .unwrap_or_default();
        let body = regions.iter().find(|r| *r.lines.start() == number);
        match pragma {
            "#pragma unroll 1" => {
                let Some(body) = body else {
                    return Err(format!(
                        "decode.cu:{number}: a rolled loop (`#pragma unroll 1`) needs ECF_MODEL_REGION() as its body's first statement"
                    ));
                };
                if body.marker != number + 1 {
                    return Err(format!(
                        "decode.cu:{number}: ECF_MODEL_REGION() must be the loop body's first statement"
                    ));
                }
            }
            "#pragma unroll" => {
                let span = lines_of_loop(lines, index);
                if let Some(inner) = regions.iter().find(|r| span.contains(&r.marker)) {
                    let iterations = unrolled_iterations(lines, text).ok_or_else(|| {
                        format!(
                            "decode.cu:{number}: an unrolled loop holds the region of line {}, and its iterations cannot be counted from its head",
                            inner.marker
                        )
                    })?;
                    for region in regions.iter_mut().filter(|r| span.contains(&r.marker)) {
                        region.copies *= iterations;
                    }
                }
            }
            _ => {
                return Err(format!(
                    "decode.cu:{number}: a loop needs `#pragma unroll` (unrolled, no region inside) or `#pragma unroll 1` (rolled, a region as its body), so that the cost model weighs its instructions by its iterations"
                ));
            }
        }
    }
    Ok(())
}

/// The iterations of a loop whose head is `for (u32 k = A; k < B; k += S)`
/// (or `k++`), its bounds numbers or `#define`d constants, or one such
/// divided by another.
fn unrolled_iterations(lines: &[&str], head: &str) -> Option<u32> {
    let term = |text: &str| -> Option<u32> {
        let text = text.trim().trim_end_matches('u');
        text.parse().ok().or_else(|| {
            lines.iter().find_map(|line| {
                let rest = line.trim().strip_prefix("#define ")?.strip_prefix(text)?;
                rest.trim().trim_end_matches('u').parse().ok()
            })
        })
    };
    let value = |text: &str| -> Option<u32> {
        match text.split_once('/') {
            Some((dividend, divisor)) => term(dividend)?.checked_div(term(divisor)?),
            None => term(text),
        }
    };
    let inside = head.trim().strip_prefix("for (")?;
    let mut parts = inside.split(';');
    let (init, test, step) = (parts.next()?, parts.next()?, parts.next()?);
    let start = value(init.split('=').nth(1)?)?;
    let end = value(test.split('<').nth(1)?)?;
    let step = step.split(')').next()?.trim();
    let stride = if step.ends_with("++") {
        1
    } else {
        value(step.split("+=").nth(1)?)?
    };
    (stride > 0 && end >= start).then(|| (end - start).div_ceil(stride))
}

/// The lines of the loop starting at `index`: to its body's closing brace.
fn lines_of_loop(lines: &[&str], index: usize) -> RangeInclusive<u32> {
    let mut depth = 0i32;
    let mut opened = false;
    for (offset, text) in lines[index..].iter().enumerate() {
        for c in text.chars() {
            match c {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        if (opened && depth <= 0) || (!opened && text.trim_end().ends_with(';')) {
            return index as u32 + 1..=(index + offset) as u32 + 1;
        }
    }
    index as u32 + 1..=lines.len() as u32
}

/// `source` with its comments blanked out, lines kept.
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    let mut block = false;
    while let Some(c) = chars.next() {
        if block {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block = false;
            } else if c == '\n' {
                out.push('\n');
            }
            continue;
        }
        if c == '/' && chars.peek() == Some(&'/') {
            while let Some(&next) = chars.peek() {
                if next == '\n' {
                    break;
                }
                chars.next();
            }
            continue;
        }
        if c == '/' && chars.peek() == Some(&'*') {
            chars.next();
            block = true;
            continue;
        }
        out.push(c);
    }
    out
}

/// The innermost region holding `line`, other than `excluding`.
fn innermost(regions: &[Region], line: u32, excluding: Option<usize>) -> Option<usize> {
    regions
        .iter()
        .enumerate()
        .filter(|&(index, r)| r.lines.contains(&line) && Some(index) != excluding)
        .min_by_key(|(_, r)| r.lines.end() - r.lines.start())
        .map(|(index, _)| index)
}

/// Each instruction's region and variant (`None` for the copies of a
/// region that are not weighed, below), and each region's parent: the
/// region whose issues weigh a region that the compiler predicated instead
/// of branching around.
///
/// A region in a function template has a copy per instantiation, called
/// as `name<VARIANT>(…)` with VARIANT a `#define`d constant: the copy
/// inlined there is that variant's, which the CPU execution counts apart
/// (`model_variant`). A region in a function inlined at several places
/// otherwise has a copy at each, and the CPU execution counts the region's
/// runs at all of them together: each run is weighed by the largest copy,
/// and the others are left out.
struct Attribution {
    region: Vec<Option<(usize, u32)>>,
    parent: Vec<Option<usize>>,
}

fn attribute(sass: &Sass, source: &str, regions: &[Region]) -> Result<Attribution, String> {
    let source_lines: Vec<&str> = source.lines().collect();
    let source_lines = source_lines.as_slice();
    let outermost = (0..regions.len())
        .max_by_key(|&i| regions[i].lines.end() - regions[i].lines.start())
        .ok_or("decode.cu has no ECF_MODEL_REGION()")?;
    // Per instruction: its region and the lines its region was inlined at.
    let mut found: Vec<(usize, &[u32])> = Vec::with_capacity(sass.instructions.len());
    let mut parent = vec![None; regions.len()];
    let mut previous: (usize, &[u32]) = (outermost, &[]);
    for instruction in &sass.instructions {
        let place = instruction
            .lines
            .iter()
            .enumerate()
            .find_map(|(depth, &line)| innermost(regions, line, None).map(|r| (depth, r)));
        let Some((depth, index)) = place else {
            if let Some(line) = instruction.lines.first() {
                return Err(format!(
                    "decode.cu:{line} compiled to {} outside every region (a function that was not inlined?)",
                    instruction.opcode
                ));
            }
            // No line of its own: it belongs with the instruction before.
            found.push(previous);
            continue;
        };
        if parent[index].is_none() {
            parent[index] = instruction.lines[depth..]
                .iter()
                .find_map(|&line| innermost(regions, line, Some(index)));
        }
        previous = (index, &instruction.lines[depth + 1..]);
        found.push(previous);
    }
    let mut copies: BTreeMap<(usize, &[u32]), usize> = BTreeMap::new();
    for &place in &found {
        *copies.entry(place).or_default() += 1;
    }
    let mut largest: BTreeMap<usize, (&[u32], usize)> = BTreeMap::new();
    for (&(index, site), &count) in &copies {
        let entry = largest.entry(index).or_insert((site, count));
        if count > entry.1 {
            *entry = (site, count);
        }
    }
    let region = found
        .iter()
        .map(|&(index, site)| match variant_of(source_lines, site)? {
            Some(variant) => Ok(Some((index, variant))),
            None => Ok((largest[&index].0 == site).then_some((index, 0))),
        })
        .collect::<Result<_, String>>()?;
    Ok(Attribution { region, parent })
}

/// Instructions between the global load `load` and the first that reads
/// what it loaded, following unconditional forward branches; `None` when no
/// instruction of `region` does before the value is overwritten, the code
/// leaves the region, or a branch goes back (the next iteration reads it: a
/// load ahead).
fn load_use_distance(instructions: &[Instruction], load: usize, region: &Region) -> Option<usize> {
    let loaded = &instructions[load].writes;
    let mut index = load + 1;
    let mut distance = 0;
    while index < instructions.len() && distance < 4096 {
        let instruction = &instructions[index];
        if !instruction.lines.is_empty()
            && !instruction.lines.iter().any(|l| region.lines.contains(l))
        {
            return None;
        }
        distance += 1;
        if instruction.reads.iter().any(|r| loaded.contains(r)) {
            return Some(distance);
        }
        if !loaded.is_empty() && loaded.iter().all(|r| instruction.writes.contains(r)) {
            return None;
        }
        match instruction.jump {
            Some(target) if target <= index => return None,
            Some(target) => index = target,
            None => index += 1,
        }
    }
    None
}

/// The variant of a copy inlined at `site` (the call lines, innermost
/// first): the first call of a template with a `#define`d constant
/// argument, `name<CONSTANT>(`, else none.
fn variant_of(source_lines: &[&str], site: &[u32]) -> Result<Option<u32>, String> {
    for &line in site {
        let Some(text) = source_lines.get(line as usize - 1) else {
            continue;
        };
        let Some(open) = text.find('<') else {
            continue;
        };
        let Some(close) = text[open..].find(">(").map(|c| open + c) else {
            continue;
        };
        let name = text[open + 1..close].trim();
        if !name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        return define_value(source_lines, name)
            .map(Some)
            .ok_or_else(|| format!("decode.cu:{line}: {name} is not a #define'd constant"));
    }
    Ok(None)
}

/// The value of `#define NAME value` in the kernel.
fn define_value(source_lines: &[&str], name: &str) -> Option<u32> {
    source_lines.iter().find_map(|line| {
        let rest = line.strip_prefix("#define ")?.strip_prefix(name)?;
        let value = rest.trim().trim_end_matches('u');
        match value.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        }
    })
}

/// The inputs of an estimate: one decode, modelled.
pub struct Workload<'a> {
    pub model: &'a KernelModel,
    pub elements: u64,
    pub output_bytes: u64,
    /// The coded tensor's bytes: what the decode must read at least.
    pub coded_bytes: u64,
}

/// Round trips a region's warp issues make to memory: how many missed L1
/// and how many hit, and how many instructions the warp issues between the
/// load and its first use.
#[derive(Clone, Copy, Debug)]
pub struct RoundTrips {
    pub distance: f64,
    pub misses: f64,
    pub hits: f64,
}

/// One region (one instantiation of it) in the cost.
#[derive(Clone, Debug)]
pub struct RegionCost {
    pub marker: u32,
    pub variant: u32,
    /// Its instructions in the SASS.
    pub instructions: usize,
    /// How often a warp issues its body.
    pub issues: f64,
    /// Its instructions as issued: the body's by `issues`, a loop's
    /// preheader by the region around it.
    pub warp_instructions: f64,
}

/// What the kernel spends on a workload, per the SASS and the execution.
pub struct KernelCost {
    /// Per region whose loads the warp waits on in the region.
    pub round_trips: Vec<RoundTrips>,
    /// Warp-instructions issued, by pipe.
    pub warp_instructions: BTreeMap<Pipe, f64>,
    /// Lane executions behind them: busy lanes = threads / (32 * warps).
    pub thread_instructions: f64,
    /// Per region and variant: its SASS and what the warps issue of it.
    pub by_region: Vec<RegionCost>,
    pub elements: f64,
    pub output_bytes: f64,
    pub ideal_bytes: f64,
    pub dram_bytes: f64,
    pub shared_wavefronts: f64,
    pub global_wavefronts: f64,
    /// Round trips a warp waits on per block (every load issue of a region
    /// whose SASS reads a loaded value in the same iteration).
    pub round_trips_per_warp_block: f64,
    pub barriers_per_block: f64,
    pub blocks: f64,
    pub warps_per_block: f64,
    /// Thread blocks an SM holds at once.
    pub resident_blocks: f64,
    pub warp_instructions_per_warp_block: f64,
}

/// The limits of one machine, in seconds, and the largest.
pub struct Estimate {
    pub limits: Vec<(&'static str, f64)>,
    pub seconds: f64,
    pub bound: &'static str,
    pub output_tbps: f64,
}

impl KernelCost {
    pub fn new(
        sass: &Sass,
        source: &str,
        workload: &Workload,
        resident_blocks: f64,
    ) -> Result<Self, String> {
        let regions = regions(source)?;
        let attribution = attribute(sass, source, &regions)?;
        let model = workload.model;
        // The runs of a region in an unrolled loop are spread over its
        // copies, one per iteration.
        let weight = |index: usize, variant: u32| -> (f64, f64) {
            let (marker, copies) = (regions[index].marker, regions[index].copies as f64);
            (
                model.warp_executions(marker, variant) as f64 / copies,
                model.thread_executions(marker, variant) as f64 / copies,
            )
        };
        // A region whose every instruction is predicated was not branched
        // around: it issues whenever the region around it does.
        // Per (region, variant): whether every instruction is predicated,
        // and how many there are.
        let mut copies: BTreeMap<(usize, u32), (bool, usize)> = BTreeMap::new();
        // The instructions in a region: index, instruction, (region, variant).
        let placed = || {
            sass.instructions
                .iter()
                .zip(&attribution.region)
                .enumerate()
                .filter_map(|(index, (instruction, place))| {
                    place.map(|place| (index, instruction, place))
                })
        };
        for (_, instruction, place) in placed() {
            let copy = copies.entry(place).or_insert((true, 0));
            copy.0 &= instruction.predicated;
            copy.1 += 1;
        }
        // A region whose every instruction is predicated was not branched
        // around: it issues whenever the region around it does.
        let issue_weight = |(index, variant): (usize, u32)| -> (f64, f64) {
            match attribution.parent[index] {
                Some(parent) if copies[&(index, variant)].0 => weight(parent, variant),
                _ => weight(index, variant),
            }
        };
        // A loop's instructions before the first its back edge goes to
        // (its preheader: set-up and the first test) run once per entry,
        // as often as the region around it.
        let mut body_starts: BTreeMap<(usize, u32), usize> = BTreeMap::new();
        for (index, instruction, place) in placed() {
            if let Some(target) = instruction.target
                && target <= index
                && attribution.region[target] == Some(place)
            {
                let start = body_starts.entry(place).or_insert(target);
                *start = (*start).min(target);
            }
        }
        let mut warp_instructions: BTreeMap<Pipe, f64> = BTreeMap::new();
        let mut region_warp_instructions: BTreeMap<(usize, u32), f64> = BTreeMap::new();
        let mut thread_instructions = 0.0;
        for (index, instruction, place) in placed() {
            let preheader = body_starts.get(&place).is_some_and(|&start| index < start);
            let (warps, threads) = match attribution.parent[place.0] {
                Some(parent) if preheader => weight(parent, place.1),
                _ => issue_weight(place),
            };
            *warp_instructions.entry(instruction.pipe).or_default() += warps;
            *region_warp_instructions.entry(place).or_default() += warps;
            thread_instructions += threads;
        }
        let by_region = copies
            .iter()
            .map(|(&place, &(_, instructions))| RegionCost {
                marker: regions[place.0].marker,
                variant: place.1,
                instructions,
                issues: issue_weight(place).0,
                warp_instructions: region_warp_instructions[&place],
            })
            .collect();
        // Per copy whose loads a warp waits on: the shortest distance from
        // such a load to its first use, and the copy's warp issues with
        // loads, with an L1 miss among them and without.
        let mut waits: BTreeMap<(usize, u32), usize> = BTreeMap::new();
        for (index, instruction, place) in placed() {
            if !instruction.is_global_load() {
                continue;
            }
            if let Some(distance) = load_use_distance(&sass.instructions, index, &regions[place.0])
            {
                let shortest = waits.entry(place).or_insert(distance);
                *shortest = (*shortest).min(distance);
            }
        }
        let round_trips = waits
            .iter()
            .map(|(&(index, variant), &distance)| {
                let (misses, hits) = model.load_executions(regions[index].marker, variant);
                RoundTrips {
                    distance: distance as f64,
                    misses: misses as f64,
                    hits: hits as f64,
                }
            })
            .collect::<Vec<_>>();
        let blocks = model.counts.blocks.max(1) as f64;
        let warps_per_block = 256.0 / 32.0;
        let total: f64 = warp_instructions.values().sum();
        Ok(KernelCost {
            round_trips,
            warp_instructions,
            thread_instructions,
            by_region,
            elements: workload.elements as f64,
            output_bytes: workload.output_bytes as f64,
            ideal_bytes: (workload.coded_bytes + workload.output_bytes) as f64,
            dram_bytes: 32.0
                * (model.counts.load_block_sectors + model.counts.store_block_sectors) as f64,
            shared_wavefronts: model.counts.shared_wavefronts as f64,
            global_wavefronts: (model.counts.load_wavefronts + model.counts.store_wavefronts)
                as f64,
            round_trips_per_warp_block: 0.0,
            barriers_per_block: model.counts.barriers as f64 / blocks,
            blocks,
            warps_per_block,
            resident_blocks,
            warp_instructions_per_warp_block: total / (blocks * warps_per_block),
        })
        .map(|mut cost: KernelCost| {
            cost.round_trips_per_warp_block = cost
                .round_trips
                .iter()
                .map(|r| r.misses + r.hits)
                .sum::<f64>()
                / (cost.blocks * cost.warps_per_block);
            cost
        })
    }

    pub fn total_warp_instructions(&self) -> f64 {
        self.warp_instructions.values().sum()
    }

    pub fn lanes_busy(&self) -> f64 {
        self.thread_instructions / (32.0 * self.total_warp_instructions().max(1.0))
    }

    /// Seconds each limit allows on `machine`, and the largest.
    pub fn estimate(&self, machine: &Machine) -> Estimate {
        let clocks = machine.sms * machine.clock_hz;
        let mut limits = vec![(
            "issue",
            self.total_warp_instructions() / (machine.issue_per_clock * clocks),
        )];
        for pipe in Pipe::ALL {
            if let (Some(lanes), Some(&count)) =
                (pipe.lanes_per_clock(), self.warp_instructions.get(&pipe))
            {
                limits.push((pipe.name(), count / (lanes / 32.0 * clocks)));
            }
        }
        limits.push((
            "smem",
            (self.shared_wavefronts + self.global_wavefronts)
                / (machine.wavefronts_per_clock * clocks),
        ));
        limits.push(("memory", self.dram_bytes / machine.dram_bytes_per_second));
        // A warp waits on a load for its latency, less the cycles of the
        // instructions it issues before the first use, each at best one
        // turn among the SM's resident warps. A block takes at least its
        // warps' waits, its barriers and a warp's own issue; an SM overlaps
        // its resident blocks.
        let turn = self.resident_blocks * self.warps_per_block / machine.issue_per_clock;
        let waits: f64 = self
            .round_trips
            .iter()
            .map(|r| {
                let hidden = (r.distance - 1.0) * turn;
                r.misses * (machine.dram_latency_cycles - hidden).max(0.0)
                    + r.hits * (machine.l1_latency_cycles - hidden).max(0.0)
            })
            .sum::<f64>()
            / (self.blocks * self.warps_per_block);
        let block_cycles = waits
            + self.barriers_per_block * machine.barrier_cycles
            + self.warp_instructions_per_warp_block;
        limits.push((
            "latency",
            self.blocks * block_cycles / (self.resident_blocks.max(1.0) * clocks),
        ));
        let (name, seconds) = limits
            .iter()
            .copied()
            .fold(("issue", 0.0), |a, b| if b.1 > a.1 { b } else { a });
        let bound = match name {
            "smem" | "memory" | "latency" => name,
            _ => "issue",
        };
        Estimate {
            output_tbps: self.output_bytes / seconds / 1e12,
            limits,
            seconds,
            bound,
        }
    }

    /// The `kernel cost:` line's figures after the tensor's name.
    pub fn summary(&self) -> String {
        let h100 = self.estimate(&H100);
        let h200 = self.estimate(&H200);
        format!(
            "warp_instructions_per_element={:.3} smem_wavefronts_per_element={:.3} \
             dram_bytes_per_ideal={:.2} round_trips_per_block={:.1} barriers_per_block={:.1} \
             lanes_busy={:.2} h100_tbps={:.2} h200_tbps={:.2} bound={}",
            self.total_warp_instructions() / self.elements,
            self.shared_wavefronts / self.elements,
            self.dram_bytes / self.ideal_bytes,
            self.round_trips_per_warp_block,
            self.barriers_per_block,
            self.lanes_busy(),
            h100.output_tbps,
            h200.output_tbps,
            h100.bound,
        )
    }
}
