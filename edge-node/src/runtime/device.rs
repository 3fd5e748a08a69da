//! Device classes: from what the machine is (its memory, address space,
//! architecture and cores) to how the node's engine is set up for it: which
//! code it runs (cranelift's native code or the Pulley interpreter, for
//! which CPU), the address space each linear memory reserves, the slots of
//! the instance pool http pods are served from, and the worker threads of
//! the node's async runtime. Pure: [`Machine::this`] is the only reading of
//! the machine, and every choice can be overridden by a `flotilla node`
//! flag ([`Overrides`]).
//!
//! The code-affecting choices ([`CodeTarget`]) depend on the architecture
//! only, not on the class, so that a cluster of Pis of every size has one
//! engine profile per architecture and a master compiles each module once
//! for all of them.

use flotilla_api::objects::CodeTarget;

/// Memory below which a machine is `tiny` (a Pi Zero 2 W or a Pi 3 with
/// 512 MiB or 1 GiB reports a little less than that).
const TINY_BELOW: u64 = 3 << 29; // 1.5 GiB
/// Memory below which a machine is `small` (a Pi 4 with 2 or 4 GiB).
const SMALL_BELOW: u64 = 6 << 30;
/// Address space the instance pool may take on aarch64: a quarter of the
/// 512 GiB a 39-bit kernel (as Raspberry Pi OS builds them) gives a process.
const AARCH64_POOL_SPACE: u64 = 128 << 30;
/// Address space the pool may take on x86_64 (of 128 TiB): what 1,000
/// slots of two 4 GiB memories take, with room to spare.
const X86_64_POOL_SPACE: u64 = 16 << 40;
/// Linear memories per pool slot (kept equal to `serving`'s).
const MEMORIES_PER_SLOT: u64 = 2;
/// The most slots any class gets: as many requests in flight as
/// `wasmtime serve` allows.
const MAX_SLOTS: u32 = 1000;

/// How big a device is, by its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Under 1.5 GiB: a Pi Zero 2 W, a Pi 3.
    Tiny,
    /// Under 6 GiB: a Pi 4 with 2 or 4 GiB.
    Small,
    /// 6 GiB and more: a Pi 5 with 8 GiB, an x86 box.
    Standard,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Tiny => "tiny",
            Class::Small => "small",
            Class::Standard => "standard",
        }
    }

    /// The class of a machine with `memory` bytes (0: unknown, taken as small).
    pub fn of(memory: u64) -> Class {
        match memory {
            0 => Class::Small,
            m if m < TINY_BELOW => Class::Tiny,
            m if m < SMALL_BELOW => Class::Small,
            _ => Class::Standard,
        }
    }
}

impl std::str::FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Class, String> {
        match s {
            "tiny" => Ok(Class::Tiny),
            "small" => Ok(Class::Small),
            "standard" => Ok(Class::Standard),
            other => Err(format!(
                "unknown device class {other:?}; give tiny, small or standard"
            )),
        }
    }
}

/// Which CPU features code is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cpu {
    /// Only what every CPU of the architecture has: code any master can
    /// compile for the node.
    Baseline,
    /// Everything this machine's CPU has (SSE4, AVX2, ...): faster code
    /// that only a master on a CPU with the same features can compile.
    Native,
}

impl Cpu {
    pub fn as_str(self) -> &'static str {
        match self {
            Cpu::Baseline => "baseline",
            Cpu::Native => "native",
        }
    }
}

impl std::str::FromStr for Cpu {
    type Err = String;
    fn from_str(s: &str) -> Result<Cpu, String> {
        match s {
            "baseline" => Ok(Cpu::Baseline),
            "native" => Ok(Cpu::Native),
            other => Err(format!(
                "unknown CPU setting {other:?}; give baseline or native"
            )),
        }
    }
}

/// What the machine is, as far as the engine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// `std::env::consts::ARCH`: `x86_64`, `aarch64`, `arm`, ...
    pub arch: String,
    /// The target triple this binary was built for.
    pub triple: String,
    pub pointer_width: u32,
    /// Total memory in bytes (0: unknown).
    pub memory: u64,
    pub cores: u32,
}

impl Machine {
    /// This machine, as this binary sees it.
    pub fn this() -> Machine {
        Machine {
            arch: std::env::consts::ARCH.to_string(),
            triple: host_triple(),
            pointer_width: usize::BITS,
            memory: super::compile::total_memory().unwrap_or(0),
            cores: std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1),
        }
    }

    /// Whether cranelift can produce native code for this machine.
    fn has_cranelift(&self) -> bool {
        self.pointer_width == 64 && matches!(self.arch.as_str(), "x86_64" | "aarch64")
    }
}

/// The triple of this build, as wasmtime names the host (only x86_64 and
/// aarch64 use it: other machines run Pulley).
fn host_triple() -> String {
    let env = if cfg!(target_env = "musl") {
        "musl"
    } else {
        "gnu"
    };
    format!(
        "{}-unknown-{}-{env}",
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// What the operator set by flags; None leaves the choice to the class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub class: Option<Class>,
    pub cpu: Option<Cpu>,
    pub memory_reservation: Option<u64>,
    pub memory_guard: Option<u64>,
    pub http_slots: Option<u32>,
    pub runtime_threads: Option<u32>,
}

/// How the node's engine and runtime are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub class: Class,
    /// The code the engine runs (what a master must reproduce).
    pub code: CodeTarget,
    /// Slots of the instance pool (0: no pool).
    pub http_slots: u32,
    pub runtime_threads: u32,
}

impl Profile {
    /// Whether the engine interprets Pulley bytecode rather than running native code.
    pub fn is_pulley(&self) -> bool {
        self.code.target.starts_with("pulley")
    }
}

/// The profile this machine gets without flags.
pub fn for_this_machine() -> Result<Profile, String> {
    profile(&Machine::this(), &Overrides::default())
}

/// The profile for `machine`, with what `o` overrides. `Err` says which
/// flag asks for what this machine cannot do.
pub fn profile(machine: &Machine, o: &Overrides) -> Result<Profile, String> {
    let class = o.class.unwrap_or_else(|| Class::of(machine.memory));
    let code = code_target(machine, o)?;
    let pooled = code.target != "pulley32";
    let http_slots = match o.http_slots {
        Some(n) => n,
        None if !pooled => 0,
        None => default_slots(machine, class, &code),
    };
    if http_slots > 0 && !pooled {
        return Err(format!(
            "--http-slots {http_slots}: a 32-bit machine has no address space for an instance pool; leave it at 0"
        ));
    }
    let runtime_threads = match o.runtime_threads {
        Some(0) => return Err("--runtime-threads must be at least 1".into()),
        Some(n) => n,
        None => {
            let by_class = match class {
                Class::Tiny => 1,
                Class::Small => 2,
                Class::Standard => machine.cores,
            };
            by_class.clamp(1, machine.cores.max(1))
        }
    };
    Ok(Profile {
        class,
        code,
        http_slots,
        runtime_threads,
    })
}

/// The code the engine runs: cranelift's for x86_64 and aarch64 (for any
/// CPU of the architecture on aarch64, this CPU's on x86_64, where nodes
/// are fast enough to compile and masters are often of another model), the
/// Pulley interpreter elsewhere. Memory reservations as wasmtime's
/// defaults, but on aarch64 small enough that a pool fits in the address
/// space of a Pi's kernel.
fn code_target(machine: &Machine, o: &Overrides) -> Result<CodeTarget, String> {
    let (target, cpu, reservation, guard) = if machine.has_cranelift() {
        let (cpu, reservation, guard) = match machine.arch.as_str() {
            "aarch64" => (Cpu::Baseline, 128 << 20, 2 << 20),
            _ => (Cpu::Native, 4 << 30, 32 << 20),
        };
        (
            machine.triple.clone(),
            o.cpu.unwrap_or(cpu),
            reservation,
            guard,
        )
    } else {
        if o.cpu == Some(Cpu::Native) {
            return Err(format!(
                "--engine-cpu native: this {} machine runs the Pulley interpreter, which has no CPU features to choose",
                machine.arch
            ));
        }
        // wasmtime's own defaults for Pulley: no guard pages, which the
        // interpreter cannot use.
        match machine.pointer_width {
            32 => ("pulley32".to_string(), Cpu::Baseline, 10 << 20, 0),
            _ => ("pulley64".to_string(), Cpu::Baseline, 4 << 30, 0),
        }
    };
    let memory_reservation = o.memory_reservation.unwrap_or(reservation);
    let memory_guard = o.memory_guard.unwrap_or(guard);
    if memory_reservation < 1 << 16 {
        return Err(format!(
            "--memory-reservation {memory_reservation}: give at least 64Ki (one WebAssembly page)"
        ));
    }
    if machine.pointer_width == 32 && memory_reservation.saturating_add(memory_guard) > 1 << 30 {
        return Err(
            "--memory-reservation: a 32-bit machine cannot reserve more than 1Gi for one memory"
                .into(),
        );
    }
    Ok(CodeTarget {
        target,
        cpu: cpu.as_str().into(),
        memory_reservation,
        memory_guard,
    })
}

/// Pool slots by class (one per 4 MiB of memory, as a busy request holds
/// a guest's memory and stack), at most what fits in the address space the
/// pool may take.
fn default_slots(machine: &Machine, class: Class, code: &CodeTarget) -> u32 {
    let by_class: u32 = match class {
        Class::Tiny => 64,
        Class::Small => 256,
        Class::Standard => MAX_SLOTS,
    };
    let space = if machine.arch == "aarch64" {
        AARCH64_POOL_SPACE
    } else {
        X86_64_POOL_SPACE
    };
    let per_slot = MEMORIES_PER_SLOT * code.memory_reservation.saturating_add(code.memory_guard);
    let fits = u32::try_from(space / per_slot.max(1)).unwrap_or(u32::MAX);
    by_class.min(fits)
}

/// The code target as one argument for the compiler child
/// (`TARGET,CPU,RESERVATION,GUARD`), read back by [`parse_code`].
pub fn encode_code(code: &CodeTarget) -> String {
    format!(
        "{},{},{},{}",
        code.target, code.cpu, code.memory_reservation, code.memory_guard
    )
}

/// Reads what [`encode_code`] wrote.
pub fn parse_code(s: &str) -> Result<CodeTarget, String> {
    let bad = || format!("{s:?} is not TARGET,CPU,RESERVATION,GUARD");
    let mut parts = s.split(',');
    let (Some(target), Some(cpu), Some(res), Some(guard), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let cpu: Cpu = cpu.parse()?;
    Ok(CodeTarget {
        target: target.to_string(),
        cpu: cpu.as_str().into(),
        memory_reservation: res.parse().map_err(|_| bad())?,
        memory_guard: guard.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn machine(arch: &str, width: u32, memory: u64, cores: u32) -> Machine {
        Machine {
            arch: arch.into(),
            triple: format!("{arch}-unknown-linux-gnu"),
            pointer_width: width,
            memory,
            cores,
        }
    }

    #[test]
    fn classes_follow_memory() {
        assert_eq!(Class::of(430 << 20), Class::Tiny); // Pi Zero 2 W
        assert_eq!(Class::of(900 << 20), Class::Tiny); // Pi 3
        assert_eq!(Class::of(3_700 << 20), Class::Small); // Pi 4, 4 GiB
        assert_eq!(Class::of(7_900 << 20), Class::Standard); // Pi 5, 8 GiB
        assert_eq!(Class::of(0), Class::Small);
    }

    #[test]
    fn a_pi_zero_runs_one_thread_and_a_small_pool() {
        let p = profile(&machine("aarch64", 64, 430 << 20, 4), &Overrides::default()).unwrap();
        assert_eq!(p.class, Class::Tiny);
        assert_eq!(p.runtime_threads, 1);
        assert_eq!(p.http_slots, 64);
        assert_eq!(p.code.cpu, "baseline");
        assert_eq!(p.code.target, "aarch64-unknown-linux-gnu");
        assert!(!p.is_pulley());
    }

    #[test]
    fn an_aarch64_pool_fits_in_a_39_bit_address_space() {
        let p = profile(&machine("aarch64", 64, 8 * GIB, 4), &Overrides::default()).unwrap();
        assert_eq!(p.class, Class::Standard);
        assert_eq!(p.runtime_threads, 4);
        let per_slot = 2 * (p.code.memory_reservation + p.code.memory_guard);
        assert!(u64::from(p.http_slots) * per_slot <= 128 * GIB, "{p:?}");
        assert!(p.http_slots >= 400, "{p:?}");
    }

    #[test]
    fn x86_keeps_wasmtimes_layout_and_its_cpu() {
        let p = profile(&machine("x86_64", 64, 24 * GIB, 2), &Overrides::default()).unwrap();
        assert_eq!(p.http_slots, 1000);
        assert_eq!(p.runtime_threads, 2);
        assert_eq!(p.code.cpu, "native");
        assert_eq!(p.code.memory_reservation, 4 * GIB);
    }

    #[test]
    fn armv7_interprets_pulley_without_a_pool() {
        let p = profile(&machine("arm", 32, 900 << 20, 4), &Overrides::default()).unwrap();
        assert!(p.is_pulley());
        assert_eq!(p.code.target, "pulley32");
        assert_eq!(p.http_slots, 0);
        assert_eq!(p.code.memory_guard, 0);
        let pool = Overrides {
            http_slots: Some(8),
            ..Overrides::default()
        };
        let e = profile(&machine("arm", 32, GIB, 4), &pool).unwrap_err();
        assert!(e.contains("--http-slots"), "{e}");
        let native = Overrides {
            cpu: Some(Cpu::Native),
            ..Overrides::default()
        };
        let e = profile(&machine("arm", 32, GIB, 4), &native).unwrap_err();
        assert!(e.contains("--engine-cpu"), "{e}");
    }

    #[test]
    fn flags_override_every_choice() {
        let o = Overrides {
            class: Some(Class::Standard),
            cpu: Some(Cpu::Baseline),
            memory_reservation: Some(GIB),
            memory_guard: Some(0),
            http_slots: Some(3),
            runtime_threads: Some(7),
        };
        let p = profile(&machine("x86_64", 64, GIB, 2), &o).unwrap();
        assert_eq!(p.class, Class::Standard);
        assert_eq!(p.code.cpu, "baseline");
        assert_eq!((p.code.memory_reservation, p.code.memory_guard), (GIB, 0));
        assert_eq!((p.http_slots, p.runtime_threads), (3, 7));
        let zero = Overrides {
            runtime_threads: Some(0),
            ..Overrides::default()
        };
        assert!(profile(&machine("x86_64", 64, GIB, 2), &zero).is_err());
        let tiny_memory = Overrides {
            memory_reservation: Some(100),
            ..Overrides::default()
        };
        assert!(profile(&machine("x86_64", 64, GIB, 2), &tiny_memory).is_err());
    }

    #[test]
    fn the_code_target_crosses_to_the_compiler_child_intact() {
        let p = profile(&machine("aarch64", 64, GIB, 4), &Overrides::default()).unwrap();
        assert_eq!(parse_code(&encode_code(&p.code)).unwrap(), p.code);
        assert!(parse_code("x86_64,native,1").is_err());
        assert!(parse_code("x86_64,fast,1,2").is_err());
        assert!(parse_code("x86_64,native,1,2,3").is_err());
    }

    #[test]
    fn this_build_names_its_host_as_wasmtime_does() {
        let m = Machine::this();
        assert!(m.triple.starts_with(std::env::consts::ARCH), "{}", m.triple);
        assert!(m.cores >= 1);
    }
}
