//! Codec tests, most of them on hostile input.

use super::*;

fn encode(session: u32, m: Message) -> Vec<u8> {
    Frame::new(session, m).encode().unwrap()
}

fn header(ty: u8, session: u32, len: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.push(WIRE_VERSION);
    h.push(ty);
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&session.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

fn decode_all(bytes: &[u8]) -> (Vec<Frame>, Vec<DecodeError>) {
    let mut d = Decoder::new();
    d.push(bytes);
    let (mut frames, mut errs) = (Vec::new(), Vec::new());
    loop {
        match d.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e) => errs.push(e),
        }
    }
    (frames, errs)
}

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            software: "x".into(),
            link_window: Some(2048),
            agent_start_us: Some(1_500),
            hello_us: Some(9_000),
            rehearsal_us: Some(4_000),
        }),
        Message::Error(ErrorMsg {
            kind: "k".into(),
            message: "m".into(),
            request: Some("create".into()),
        }),
        Message::Shutdown,
        Message::Create(CreateRequest {
            config: serde_json::json!({"process": {"args": ["sh"]}}),
        }),
        Message::Created,
        Message::Start(Default::default()),
        Message::Start(StartRequest {
            network: serde_json::json!({"dev.strata.net.address": "10.88.0.5/16"})
                .as_object()
                .cloned(),
            ..Default::default()
        }),
        Message::Started(Started { pid: 42 }),
        Message::Exec(ExecRequest {
            process: serde_json::json!({"args": ["ls"]}),
            tty: true,
            stdin: true,
        }),
        Message::Exec(ExecRequest {
            process: serde_json::json!({"args": ["true"]}),
            tty: false,
            stdin: false,
        }),
        Message::NetFiles(crate::NetFiles {
            hosts: Some("127.0.0.1\tlocalhost\n".into()),
            resolv: None,
        }),
        Message::Stdin(b"in".to_vec()),
        Message::Stdout(vec![0xF7, b'S', b'T', b'R', 0, 1]),
        Message::Stderr(Vec::new()),
        Message::Close(StdStream::Stdin),
        Message::Credit {
            stream: StdStream::Stdout,
            bytes: 12345,
        },
        Message::Resize { rows: 24, cols: 80 },
        Message::Signal(15),
        Message::Exit(ExitStatus {
            code: 137,
            signal: Some(9),
        }),
        Message::ExitAck,
        Message::LinkAck(4096),
    ]
}

#[test]
fn every_message_round_trips_even_byte_by_byte() {
    let mut stream = Vec::new();
    let msgs = all_messages();
    for (i, m) in msgs.iter().enumerate() {
        Frame::new(i as u32, m.clone())
            .encode_into(&mut stream)
            .unwrap();
    }
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for b in &stream {
        d.push(std::slice::from_ref(b));
        while let Some(f) = d.next_frame().unwrap() {
            got.push(f);
        }
    }
    d.finish().unwrap();
    assert_eq!(got.len(), msgs.len());
    for (i, (f, m)) in got.iter().zip(&msgs).enumerate() {
        assert_eq!(f.session, i as u32);
        assert_eq!(&f.message, m);
    }
}

#[test]
fn bad_magic_is_reported_and_the_decoder_resyncs() {
    let mut bytes = b"login: garbage\r\n".to_vec();
    bytes.extend(encode(1, Message::Start(Default::default())));
    let (frames, errs) = decode_all(&bytes);
    assert_eq!(
        frames,
        vec![Frame::new(1, Message::Start(Default::default()))]
    );
    assert!(matches!(errs[0], DecodeError::BadMagic { .. }), "{errs:?}");
}

#[test]
fn bad_version_and_flags_are_refused() {
    let mut v = encode(1, Message::Start(Default::default()));
    v[4] = 9;
    assert_eq!(decode_all(&v).1[0], DecodeError::BadVersion { found: 9 });
    let mut f = encode(1, Message::Start(Default::default()));
    f[6] = 1;
    assert_eq!(decode_all(&f).1[0], DecodeError::BadFlags { flags: 1 });
}

#[test]
fn oversize_length_is_refused_before_buffering() {
    let mut bytes = header(FrameType::Stdout as u8, 1, u32::MAX);
    bytes.extend(encode(2, Message::ExitAck));
    let (frames, errs) = decode_all(&bytes);
    assert_eq!(errs[0], DecodeError::Oversize { len: u32::MAX });
    assert_eq!(frames, vec![Frame::new(2, Message::ExitAck)]);
    let just_over = header(FrameType::Stdout as u8, 1, MAX_PAYLOAD as u32 + 1);
    assert!(matches!(
        decode_all(&just_over).1[0],
        DecodeError::Oversize { .. }
    ));
}

#[test]
fn maximal_frame_is_accepted_and_larger_encode_refused() {
    let big = Frame::new(1, Message::Stdout(vec![7; MAX_PAYLOAD]));
    let bytes = big.encode().unwrap();
    let (frames, errs) = decode_all(&bytes);
    assert!(errs.is_empty());
    assert_eq!(frames, vec![big]);
    let too_big = Frame::new(1, Message::Stdout(vec![7; MAX_PAYLOAD + 1]));
    assert!(matches!(
        too_big.encode(),
        Err(EncodeError::TooLarge { .. })
    ));
}

#[test]
fn unknown_type_is_skipped_keeping_sync() {
    let mut bytes = header(0x7e, 3, 5);
    bytes.extend_from_slice(b"hello");
    bytes.extend(encode(3, Message::Signal(2)));
    let (frames, errs) = decode_all(&bytes);
    assert_eq!(
        errs,
        vec![DecodeError::UnknownType {
            ty: 0x7e,
            session: 3
        }]
    );
    assert_eq!(frames, vec![Frame::new(3, Message::Signal(2))]);
}

#[test]
fn truncated_stream_is_reported() {
    let bytes = encode(1, Message::Stdout(b"abcdef".to_vec()));
    for cut in 1..bytes.len() {
        let mut d = Decoder::new();
        d.push(&bytes[..cut]);
        assert_eq!(d.next_frame(), Ok(None), "cut at {cut}");
        assert!(matches!(d.finish(), Err(DecodeError::Truncated { .. })));
    }
}

#[test]
fn bad_control_payloads_are_typed_errors() {
    let cases: Vec<(FrameType, Vec<u8>)> = vec![
        (FrameType::Hello, vec![0xff, 0xfe]),
        (FrameType::Hello, b"{\"min_version\": -1}".to_vec()),
        (FrameType::Create, b"{\"config\": [1,2]}".to_vec()),
        (FrameType::Create, b"{".to_vec()),
        (
            FrameType::Exec,
            b"{\"process\": {}, \"tty\": \"yes\"}".to_vec(),
        ),
        (FrameType::Exit, b"null".to_vec()),
        (FrameType::NetFiles, b"{\"hosts\": 5}".to_vec()),
        (FrameType::NetFiles, b"\"x\"".to_vec()),
        (FrameType::Start, b"x".to_vec()),
        (FrameType::Start, b"null".to_vec()),
        (FrameType::Start, b"{\"network\": 5}".to_vec()),
        (FrameType::Start, b"{\"network\": [\"a\"]}".to_vec()),
        (
            FrameType::Start,
            b"{\"network\": {}, \"exec\": \"sh\"}".to_vec(),
        ),
        (FrameType::Close, vec![3]),
        (FrameType::Close, vec![]),
        (FrameType::Credit, vec![1, 0, 0]),
        (FrameType::Resize, vec![1, 2, 3]),
        (FrameType::LinkAck, vec![1, 2, 3, 4, 5]),
        (FrameType::Signal, 0i32.to_le_bytes().to_vec()),
        (FrameType::Signal, 65i32.to_le_bytes().to_vec()),
        (FrameType::Signal, (-9i32).to_le_bytes().to_vec()),
    ];
    for (ty, payload) in cases {
        let mut bytes = header(ty as u8, 1, payload.len() as u32);
        bytes.extend_from_slice(&payload);
        bytes.extend(encode(1, Message::Created));
        let (frames, errs) = decode_all(&bytes);
        assert_eq!(errs.len(), 1, "{ty:?} {payload:?} -> {errs:?}");
        assert!(matches!(errs[0], DecodeError::Payload { .. }), "{errs:?}");
        assert_eq!(
            frames,
            vec![Frame::new(1, Message::Created)],
            "lost sync after {ty:?}"
        );
    }
    let mut utf8 = header(FrameType::Error as u8, 0, 2);
    utf8.extend_from_slice(&[b'{', 0xc3]);
    let err = decode_all(&utf8).1.remove(0);
    assert!(err.to_string().contains("UTF-8"), "{err}");
}

#[test]
fn deeply_nested_json_does_not_overflow_the_stack() {
    let payload = format!(
        "{{\"config\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut bytes = header(FrameType::Create as u8, 1, payload.len() as u32);
    bytes.extend_from_slice(payload.as_bytes());
    let (_, errs) = decode_all(&bytes);
    assert_eq!(errs.len(), 1);
}

/// Deterministic xorshift so the corpus is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The stable stand-in for the cargo-fuzz target: the same entry point over random bytes, valid
/// frames with random corruption, and random splices of valid frames.
#[test]
fn fuzz_entry_point_survives_a_hostile_corpus() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let valid: Vec<Vec<u8>> = all_messages().into_iter().map(|m| encode(1, m)).collect();
    for _ in 0..3000 {
        let len = (rng.next() % 300) as usize;
        let random: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        fuzz_decode(&random);

        let mut v = valid[(rng.next() as usize) % valid.len()].clone();
        for _ in 0..(rng.next() % 4) {
            let i = (rng.next() as usize) % v.len();
            v[i] = rng.next() as u8;
        }
        if rng.next() % 3 == 0 {
            v.truncate((rng.next() as usize) % v.len());
        }
        fuzz_decode(&v);

        let mut splice = vec![(rng.next() % 64) as u8];
        for _ in 0..(rng.next() % 6) {
            splice.extend(&valid[(rng.next() as usize) % valid.len()]);
            if rng.next() % 2 == 0 {
                splice.push(rng.next() as u8);
            }
        }
        fuzz_decode(&splice);
    }
    // Every corpus file of the fuzz target, if present, runs here too.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                fuzz_decode(&bytes);
            }
        }
    }
}

#[test]
fn an_exec_without_the_stdin_field_has_stdin_and_stdin_false_is_carried() {
    let old = br#"{"process":{"args":["true"]},"tty":false}"#;
    let Message::Exec(req) = Message::decode_payload(FrameType::Exec, old).unwrap() else {
        panic!("not an exec")
    };
    assert!(req.stdin);
    let mut bytes = Vec::new();
    Message::Exec(ExecRequest {
        stdin: false,
        ..req
    })
    .encode_payload(&mut bytes)
    .unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains(r#""stdin":false"#));
    let Message::Exec(back) = Message::decode_payload(FrameType::Exec, &bytes).unwrap() else {
        panic!("not an exec")
    };
    assert!(!back.stdin);
}

#[test]
fn the_agent_setup_time_comes_from_its_clock_and_never_goes_negative() {
    let hello = |start, hello| Hello {
        min_version: 1,
        max_version: 1,
        software: String::new(),
        link_window: None,
        agent_start_us: start,
        hello_us: hello,
        rehearsal_us: None,
    };
    assert_eq!(
        hello(Some(1_000), Some(31_000)).agent_setup(),
        Some(std::time::Duration::from_millis(30))
    );
    assert_eq!(hello(Some(31_000), Some(1_000)).agent_setup(), None);
    assert_eq!(hello(None, Some(1_000)).agent_setup(), None);
    assert_eq!(
        hello(Some(u64::MAX), Some(u64::MAX)).agent_setup(),
        Some(std::time::Duration::ZERO)
    );
    // An older agent's Hello has neither field.
    let Message::Hello(h) =
        Message::decode_payload(FrameType::Hello, br#"{"min_version":1,"max_version":1}"#).unwrap()
    else {
        panic!("not a hello")
    };
    assert_eq!(h.agent_setup(), None);
}

#[test]
fn a_plain_start_is_an_empty_frame_and_a_network_start_carries_it() {
    // The default request travels as it always did: an empty payload.
    let plain = encode(1, Message::Start(StartRequest::default()));
    assert_eq!(plain.len(), header(FrameType::Start as u8, 1, 0).len());
    let (frames, errs) = decode_all(&plain);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(
        frames,
        vec![Frame::new(1, Message::Start(StartRequest::default()))]
    );
    // `{}` is the default too.
    let mut bytes = header(FrameType::Start as u8, 1, 2);
    bytes.extend_from_slice(b"{}");
    let (frames, _) = decode_all(&bytes);
    assert_eq!(
        frames,
        vec![Frame::new(1, Message::Start(StartRequest::default()))]
    );
    let net = StartRequest {
        network: serde_json::json!({"dev.strata.net.address": "10.88.0.5/16", "dev.strata.net.mac": "aa:bb:cc:dd:ee:01"})
            .as_object()
            .cloned(),
        ..Default::default()
    };
    let (frames, errs) = decode_all(&encode(1, Message::Start(net.clone())));
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(frames, vec![Frame::new(1, Message::Start(net))]);
}
