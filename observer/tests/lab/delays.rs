//! Where the time goes: a bulk writer into a slow network waits in its socket buffer; a slow
//! reader leaves bytes waiting in its receive queue.
use crate::support::*;
use latplan_common::Layer;

const PORT: u16 = 5302;

fn largest(segs: &[(Layer, Layer, i64, usize)]) -> (Layer, Layer) {
    for s in segs {
        assert!(
            s.3 >= 20,
            "segment {}→{} has only {} matched bytes",
            s.0.name(),
            s.1.name(),
            s.3
        );
    }
    let m = segs.iter().max_by_key(|s| s.2).unwrap();
    (m.0, m.1)
}

/// Restores the wan relay's delay even when the test fails.
struct NoDelay;
impl Drop for NoDelay {
    fn drop(&mut self) {
        ci_lab(&["delay", "wan", "0ms"]);
    }
}

#[test]
fn a_bulk_writer_into_a_slow_network_waits_in_its_socket_buffer() {
    let _lock = labtools::testlab::take_lab();
    ci_lab(&["delay", "wan", "5ms"]);
    let _restore = NoDelay;
    let args = [
        "--interfaces",
        "wan0",
        "--ports",
        "5302",
        "--size",
        "16384",
        "--stats-interval",
        "1",
    ];
    let snd = Observer::start(METAL1, &args);
    let addr = format!("{METAL2_WAN}:{PORT}");
    let server = tcp_recv(METAL2, &addr, &[]);
    tcp_send(METAL1, &addr, &["--duration", "3s", "--write-size", "256K"]);
    wait_ok(server, "tcp-recv");
    let snd = snd.stop();
    let segs = segment_medians(&snd, PORT, &SEND_PATH);
    eprintln!("sender medians: {segs:?}");
    assert_eq!(
        largest(&segs),
        (Layer::SockSend, Layer::TcpSend),
        "{segs:?}"
    );
}

#[test]
fn a_slow_reader_leaves_bytes_waiting_in_its_receive_queue() {
    let _lock = labtools::testlab::take_lab();
    let args = [
        "--interfaces",
        "wan0",
        "--ports",
        "5302",
        "--size",
        "16384",
        "--stats-interval",
        "1",
    ];
    let rcv = Observer::start(METAL2, &args);
    let addr = format!("{METAL2_WAN}:{PORT}");
    let server = tcp_recv(METAL2, &addr, &["--read-rate", "2M"]);
    tcp_send(METAL1, &addr, &["--bytes", "6M"]);
    wait_ok(server, "tcp-recv");
    let rcv = rcv.stop();
    let segs = segment_medians(&rcv, PORT, &RECV_PATH);
    eprintln!("receiver medians: {segs:?}");
    assert_eq!(
        largest(&segs),
        (Layer::SockQueue, Layer::SockRecv),
        "{segs:?}"
    );
}
