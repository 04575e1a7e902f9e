//! Device access rules (`linux.resources.devices`): validation, the v1
//! `devices.allow`/`devices.deny` lines, and the v2 eBPF program that enforces them.
//!
//! Both backends give the same meaning to the rule list: rules apply in order and
//! the last rule that matches an access decides it; nothing is allowed before the
//! first rule (runc's default deny-all). In the eBPF program this becomes "check the
//! rules from last to first, the first match returns its verdict".

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResources,
};

use super::CgroupError;

/// BPF_DEVCG_ACC_* bits of `bpf_cgroup_dev_ctx.access_type >> 16`.
pub(crate) const ACC_MKNOD: u8 = 1;
pub(crate) const ACC_READ: u8 = 2;
pub(crate) const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// BPF_DEVCG_DEV_* values of `access_type & 0xffff`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// One validated device rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub allow: bool,
    /// 'a' (all), 'b' or 'c'.
    pub kind: char,
    /// `None` is the `*` wildcard.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// ACC_* bits.
    pub access: u8,
}

impl Rule {
    /// The rule as a line for v1 `devices.allow` / `devices.deny`, e.g. `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        let mut acc = String::new();
        if self.access & ACC_READ != 0 {
            acc.push('r');
        }
        if self.access & ACC_WRITE != 0 {
            acc.push('w');
        }
        if self.access & ACC_MKNOD != 0 {
            acc.push('m');
        }
        if self.kind == 'a'
            && self.major.is_none()
            && self.minor.is_none()
            && self.access == ACC_ALL
        {
            return "a".to_owned();
        }
        format!(
            "{} {}:{} {}",
            self.kind,
            num(self.major),
            num(self.minor),
            acc
        )
    }

    fn matches_everything(&self) -> bool {
        self.kind == 'a' && self.major.is_none() && self.minor.is_none() && self.access == ACC_ALL
    }
}

fn device_number(what: &'static str, n: Option<i64>) -> Result<Option<u32>, CgroupError> {
    match n {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| CgroupError::InvalidResource {
                resource: "devices",
                reason: format!(
                    "{what} number {n} is out of range (0..=4294967295, or -1/absent for any)"
                ),
            }),
    }
}

/// Validates the spec's device rules.
pub(crate) fn parse_rules(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, CgroupError> {
    rules
        .iter()
        .map(|r| {
            let kind = match r.typ().unwrap_or(LinuxDeviceType::A) {
                LinuxDeviceType::A => 'a',
                LinuxDeviceType::B => 'b',
                LinuxDeviceType::C | LinuxDeviceType::U => 'c',
                LinuxDeviceType::P => return Err(CgroupError::InvalidResource {
                    resource: "devices",
                    reason:
                        "type \"p\" (FIFO) cannot be used in a device cgroup rule; use a, b or c"
                            .into(),
                }),
            };
            let mut access = 0;
            let text = r.access().as_deref().unwrap_or("rwm");
            for ch in text.chars() {
                access |= match ch {
                    'r' => ACC_READ,
                    'w' => ACC_WRITE,
                    'm' => ACC_MKNOD,
                    other => {
                        return Err(CgroupError::InvalidResource {
                            resource: "devices",
                            reason: format!(
                                "access {text:?} has {other:?}; only r, w and m are allowed"
                            ),
                        })
                    }
                };
            }
            if access == 0 {
                access = ACC_ALL;
            }
            Ok(Rule {
                allow: r.allow(),
                kind,
                major: device_number("major", r.major())?,
                minor: device_number("minor", r.minor())?,
                access,
            })
        })
        .collect()
}

/// `resources` with the device rules runc always adds after the spec's own: mknod
/// of any device, the standard /dev nodes (null, zero, full, tty, random, urandom,
/// ptmx, pts, tun) and every `linux.devices` entry. Like runc, the result always has
/// a device list, so a spec without one still gets the default deny-all.
pub fn with_runc_default_devices(
    resources: Option<&LinuxResources>,
    linux_devices: &[LinuxDevice],
) -> LinuxResources {
    let mut r = resources.cloned().unwrap_or_default();
    let mut rules = r.devices().clone().unwrap_or_default();
    let rule = |typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().expect("all fields have defaults")
    };
    use LinuxDeviceType::{B, C};
    rules.push(rule(C, None, None, "m"));
    rules.push(rule(B, None, None, "m"));
    for (major, minor) in [(1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9)] {
        rules.push(rule(C, Some(major), Some(minor), "rwm"));
    }
    rules.push(rule(C, Some(136), None, "rwm"));
    rules.push(rule(C, Some(5), Some(2), "rwm"));
    rules.push(rule(C, Some(10), Some(200), "rwm"));
    // A FIFO (type p) is a plain file for the device cgroup: it needs no rule, and "p" is not a
    // rule type (a, b, c).
    for d in linux_devices
        .iter()
        .filter(|d| d.typ() != LinuxDeviceType::P)
    {
        rules.push(rule(d.typ(), Some(d.major()), Some(d.minor()), "rwm"));
    }
    r.set_devices(Some(rules));
    r
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes (class | op | source), from linux/bpf.h and linux/bpf_common.h.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const JMP32_JNE_K: u8 = 0x56; // BPF_JMP32 | BPF_JNE | BPF_K
const JMP32_JEQ_K: u8 = 0x16; // BPF_JMP32 | BPF_JEQ | BPF_K
const JMP32_JNE_X: u8 = 0x5e; // BPF_JMP32 | BPF_JNE | BPF_X
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// Marks a jump whose offset is "to the start of the next rule's block".
const NEXT: i16 = i16::MIN;

/// Builds the BPF_PROG_TYPE_CGROUP_DEVICE program for `rules`: returns 1 (allow)
/// or 0 (deny, the process sees EPERM) for each device access.
pub(crate) fn program(rules: &[Rule]) -> Vec<Insn> {
    // R1 = struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
    let mut prog = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),        // w2 = ctx->access_type
        insn(ALU32_AND_K, 2, 0, 0, 0xffff), // w2 &= 0xffff  (device type)
        insn(LDX_MEM_W, 3, 1, 0, 0),        // w3 = ctx->access_type
        insn(ALU32_RSH_K, 3, 0, 0, 16),     // w3 >>= 16  (requested access)
        insn(LDX_MEM_W, 4, 1, 4, 0),        // w4 = ctx->major
        insn(LDX_MEM_W, 5, 1, 8, 0),        // w5 = ctx->minor
    ];
    let mut default_allow = false;
    for rule in rules.iter().rev() {
        if rule.matches_everything() {
            // Every earlier rule is shadowed by this one.
            default_allow = rule.allow;
            break;
        }
        let mut block = Vec::with_capacity(8);
        match rule.kind {
            'b' => block.push(insn(JMP32_JNE_K, 2, 0, NEXT, DEV_BLOCK)),
            'c' => block.push(insn(JMP32_JNE_K, 2, 0, NEXT, DEV_CHAR)),
            _ => {}
        }
        if rule.access != ACC_ALL {
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0)); // w1 = w3
            block.push(insn(ALU32_AND_K, 1, 0, 0, i32::from(rule.access))); // w1 &= access
            if rule.allow {
                // Allow only if every requested bit is allowed.
                block.push(insn(JMP32_JNE_X, 1, 3, NEXT, 0));
            } else {
                // Deny if any requested bit is denied.
                block.push(insn(JMP32_JEQ_K, 1, 0, NEXT, 0));
            }
        }
        if let Some(major) = rule.major {
            block.push(insn(JMP32_JNE_K, 4, 0, NEXT, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(JMP32_JNE_K, 5, 0, NEXT, minor as i32));
        }
        block.push(insn(ALU32_MOV_K, 0, 0, 0, i32::from(rule.allow)));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == NEXT {
                ins.off = (len - i - 1) as i16;
            }
        }
        prog.extend(block);
    }
    prog.push(insn(ALU32_MOV_K, 0, 0, 0, i32::from(default_allow)));
    prog.push(insn(JMP_EXIT, 0, 0, 0, 0));
    prog
}

/// Runs `prog` on one access the way the kernel would: a tiny interpreter for the
/// instructions [`program`] emits, so tests (and the fuzz entry) check verdicts and
/// that every jump lands inside the program, not just bytes.
pub(crate) fn evaluate(prog: &[Insn], kind: i32, access: u8, major: u32, minor: u32) -> u32 {
    let ctx = [(u32::from(access) << 16) | kind as u32, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = *prog.get(pc).expect("jump out of the program");
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        let imm32 = i.imm as u32;
        let mut next = pc + 1;
        match i.code {
            LDX_MEM_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
            ALU32_AND_K => r[dst] = u64::from(r[dst] as u32 & imm32),
            ALU32_RSH_K => r[dst] = u64::from((r[dst] as u32) >> imm32),
            ALU32_MOV_K => r[dst] = u64::from(imm32),
            ALU32_MOV_X => r[dst] = u64::from(r[src] as u32),
            JMP32_JNE_K if r[dst] as u32 != imm32 => next = pc + 1 + i.off as usize,
            JMP32_JEQ_K if r[dst] as u32 == imm32 => next = pc + 1 + i.off as usize,
            JMP32_JNE_X if r[dst] as u32 != r[src] as u32 => next = pc + 1 + i.off as usize,
            JMP32_JNE_K | JMP32_JEQ_K | JMP32_JNE_X => {}
            JMP_EXIT => return r[0] as u32,
            other => panic!("unexpected opcode {other:#x}"),
        }
        pc = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        typ: Option<LinuxDeviceType>,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .access(access);
        if let Some(t) = typ {
            b = b.typ(t);
        }
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    /// Docker's default list: deny all, then allow a few char devices.
    fn docker_rules() -> Vec<Rule> {
        parse_rules(&[
            rule(false, None, None, None, "rwm"),
            rule(true, Some(LinuxDeviceType::C), Some(1), Some(3), "rwm"),
            rule(true, Some(LinuxDeviceType::C), Some(136), None, "rwm"),
            rule(true, Some(LinuxDeviceType::C), Some(1), Some(5), "r"),
            rule(false, Some(LinuxDeviceType::C), Some(1), Some(3), "w"),
        ])
        .unwrap()
    }

    #[test]
    fn v1_lines() {
        let r = docker_rules();
        let lines: Vec<String> = r.iter().map(Rule::v1_line).collect();
        assert_eq!(
            lines,
            ["a", "c 1:3 rwm", "c 136:* rwm", "c 1:5 r", "c 1:3 w"]
        );
    }

    #[test]
    fn instruction_sequence() {
        let r = parse_rules(&[
            rule(false, None, None, None, "rwm"),
            rule(true, Some(LinuxDeviceType::C), Some(1), Some(3), "rw"),
        ])
        .unwrap();
        let p = program(&r);
        let expect = vec![
            insn(LDX_MEM_W, 2, 1, 0, 0),
            insn(ALU32_AND_K, 2, 0, 0, 0xffff),
            insn(LDX_MEM_W, 3, 1, 0, 0),
            insn(ALU32_RSH_K, 3, 0, 0, 16),
            insn(LDX_MEM_W, 4, 1, 4, 0),
            insn(LDX_MEM_W, 5, 1, 8, 0),
            // rule "allow c 1:3 rw"
            insn(JMP32_JNE_K, 2, 0, 7, DEV_CHAR),
            insn(ALU32_MOV_X, 1, 3, 0, 0),
            insn(ALU32_AND_K, 1, 0, 0, 6),
            insn(JMP32_JNE_X, 1, 3, 4, 0),
            insn(JMP32_JNE_K, 4, 0, 3, 1),
            insn(JMP32_JNE_K, 5, 0, 2, 3),
            insn(ALU32_MOV_K, 0, 0, 0, 1),
            insn(JMP_EXIT, 0, 0, 0, 0),
            // "deny a" shadows nothing before it: default deny
            insn(ALU32_MOV_K, 0, 0, 0, 0),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ];
        assert_eq!(p, expect);
    }

    #[test]
    fn verdicts_follow_last_matching_rule() {
        let p = program(&docker_rules());
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(
            evaluate(&p, DEV_CHAR, ACC_READ, 1, 3),
            1,
            "read /dev/null allowed"
        );
        assert_eq!(
            evaluate(&p, DEV_CHAR, rw, 1, 3),
            0,
            "write /dev/null denied by the last rule"
        );
        assert_eq!(evaluate(&p, DEV_CHAR, ACC_MKNOD, 1, 3), 1);
        assert_eq!(evaluate(&p, DEV_CHAR, rw, 136, 7), 1, "pts wildcard minor");
        assert_eq!(
            evaluate(&p, DEV_BLOCK, ACC_READ, 136, 7),
            0,
            "type must match"
        );
        assert_eq!(evaluate(&p, DEV_CHAR, ACC_READ, 1, 5), 1);
        assert_eq!(evaluate(&p, DEV_CHAR, rw, 1, 5), 0, "only r allowed on 1:5");
        assert_eq!(evaluate(&p, DEV_BLOCK, ACC_READ, 8, 0), 0, "default deny");
    }

    #[test]
    fn allow_all_then_deny_one() {
        let r = parse_rules(&[
            rule(true, None, None, None, "rwm"),
            rule(false, Some(LinuxDeviceType::B), Some(8), None, "w"),
        ])
        .unwrap();
        let p = program(&r);
        assert_eq!(evaluate(&p, DEV_BLOCK, ACC_READ, 8, 1), 1);
        assert_eq!(evaluate(&p, DEV_BLOCK, ACC_WRITE, 8, 1), 0);
        assert_eq!(evaluate(&p, DEV_CHAR, ACC_WRITE, 8, 1), 1);
        // No rules at all: deny everything (runc's default).
        assert_eq!(evaluate(&program(&[]), DEV_CHAR, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn bad_rules_are_rejected() {
        assert!(parse_rules(&[rule(true, Some(LinuxDeviceType::P), None, None, "rwm")]).is_err());
        assert!(parse_rules(&[rule(true, None, None, None, "rwx")]).is_err());
        assert!(parse_rules(&[rule(true, None, Some(-2), None, "r")]).is_err());
        assert!(parse_rules(&[rule(true, None, Some(1 << 33), None, "r")]).is_err());
        assert_eq!(
            parse_rules(&[rule(true, None, Some(-1), None, "r")]).unwrap()[0].major,
            None
        );
    }
}
