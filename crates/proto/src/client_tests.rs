//! The host client against a hostile agent: malformed frames, huge lengths, credit violations
//! and host-only messages are refused by closing the connection, never by a panic or unbounded
//! buffering.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::*;

fn agent_hello() -> Vec<u8> {
    Frame::new(
        0,
        Message::Hello(Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            software: "fake".into(),
            link_window: None,
            agent_start_us: None,
            hello_us: None,
            rehearsal_us: None,
        }),
    )
    .encode()
    .unwrap()
}

/// A fake agent on a socketpair: announces itself, waits for the host's Create, then answers
/// with `then`.
fn fake_agent(then: Vec<u8>) -> (Client, std::thread::JoinHandle<()>) {
    let (host, mut agent) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        agent.write_all(&agent_hello()).unwrap();
        let mut dec = Decoder::new();
        let mut buf = [0u8; 4096];
        'wait: loop {
            match agent.read(&mut buf) {
                Ok(n) if n > 0 => dec.push(&buf[..n]),
                _ => return,
            }
            while let Ok(Some(f)) = dec.next_frame() {
                if matches!(f.message, Message::Create(_)) {
                    break 'wait;
                }
            }
        }
        let _ = agent.write_all(&then);
        // Keep the socket open until the host gives up, so the error is the frame, not EOF.
        while matches!(agent.read(&mut buf), Ok(n) if n > 0) {}
    });
    let client = Client::from_unix_stream(host, Duration::from_secs(5)).unwrap();
    (client, t)
}

fn created_then(extra: Vec<u8>) -> Vec<u8> {
    let mut v = Frame::new(MAIN_SESSION, Message::Created).encode().unwrap();
    v.extend(extra);
    v
}

fn expect_lost(then: Vec<u8>, what: &str) {
    let (client, t) = fake_agent(created_then(then));
    let err = client
        .create(br#"{"process": {"args": ["true"]}}"#)
        .and_then(|main| main.wait())
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::ConnectionLost(m) if m.contains(what)),
        "{err}"
    );
    drop(client);
    t.join().unwrap();
}

#[test]
fn malformed_and_oversize_frames_close_the_connection() {
    expect_lost(b"\x00garbage".to_vec(), "bad frame magic");
    let mut huge = MAGIC.to_vec();
    huge.extend_from_slice(&[
        1,
        FrameType::Stdout as u8,
        0,
        0,
        1,
        0,
        0,
        0,
        0xff,
        0xff,
        0xff,
        0x7f,
    ]);
    expect_lost(huge, "exceeds the maximum");
    let mut bad_json = MAGIC.to_vec();
    bad_json.extend_from_slice(&[1, FrameType::Exit as u8, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'{']);
    expect_lost(bad_json, "bad Exit payload");
}

#[test]
fn output_beyond_the_credit_window_is_refused() {
    let mut flood = Vec::new();
    for _ in 0..(INITIAL_WINDOW as usize / DATA_CHUNK + 2) {
        flood.extend(
            Frame::new(MAIN_SESSION, Message::Stdout(vec![b'x'; DATA_CHUNK]))
                .encode()
                .unwrap(),
        );
    }
    expect_lost(flood, "beyond its");
}

#[test]
fn host_only_messages_from_the_agent_are_refused() {
    expect_lost(
        Frame::new(MAIN_SESSION, Message::Start(Default::default()))
            .encode()
            .unwrap(),
        "only the host may send",
    );
}

#[test]
fn an_agent_that_hangs_up_fails_pending_calls() {
    let (host, mut agent) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        agent.write_all(&agent_hello()).unwrap();
        let mut buf = [0u8; 4096];
        let _ = agent.read(&mut buf);
        // Half a frame, then EOF.
        let _ = agent.write_all(&Frame::new(1, Message::Created).encode().unwrap()[..7]);
    });
    let client = Client::from_unix_stream(host, Duration::from_secs(5)).unwrap();
    t.join().unwrap();
    let err = client
        .create(br#"{"process": {"args": ["true"]}}"#)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::ConnectionLost(m) if m.contains("inside a frame")),
        "{err}"
    );
}

#[test]
fn an_agent_with_another_version_is_refused() {
    let (host, mut agent) = UnixStream::pair().unwrap();
    let hello = Frame::new(
        0,
        Message::Hello(Hello {
            min_version: 7,
            max_version: 9,
            software: "future".into(),
            link_window: None,
            agent_start_us: None,
            hello_us: None,
            rehearsal_us: None,
        }),
    );
    agent.write_all(&hello.encode().unwrap()).unwrap();
    let err = Client::from_unix_stream(host, Duration::from_secs(5))
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("protocol versions 7..=9"), "{err}");
}

#[test]
fn a_silent_agent_times_out() {
    let (host, _agent) = UnixStream::pair().unwrap();
    let err = Client::from_unix_stream(host, Duration::from_millis(100))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout(..)), "{err}");
}

#[test]
fn an_agent_that_never_answers_start_times_out_with_the_step() {
    // Created, then nothing: an agent that cannot read the Start (another build) or a hung guest.
    let (client, t) = fake_agent(created_then(Vec::new()));
    client
        .create(br#"{"process": {"args": ["true"]}}"#)
        .unwrap();
    client.set_answer_timeout(Duration::from_millis(200));
    let err = client.start().unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout(d, "start") if d == Duration::from_millis(200)),
        "{err}"
    );
    assert!(
        err.to_string().contains("waiting for the agent to start"),
        "{err}"
    );
    drop(client);
    t.join().unwrap();
}
