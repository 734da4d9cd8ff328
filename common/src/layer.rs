//! The stack layers at which a sampled byte is observed, in path order.

/// Which way along the stack a layer sits: towards the wire (send) or towards the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(rename_all = "snake_case"))]
pub enum Direction {
    Send,
    Recv,
}

/// A point on a byte's way from the sender's application to the receiver's application.
///
/// The numeric values are on the wire and in the store: never renumber, only append.
/// Within a direction, layers are listed in the order a byte passes them, so consecutive
/// observed layers on one host form the per-layer segments of the analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(rename_all = "snake_case"))]
#[repr(u8)]
pub enum Layer {
    /// The application entered a send call (`write`, `send*`) that queued this byte.
    SockSend = 0,
    /// TCP handed the segment holding this byte to IP (transmission or retransmission).
    TcpSend = 1,
    /// IP handed the packet to the device layer (`net_dev_queue`).
    IpSend = 2,
    /// The packet left a named interface (TC egress, before that device's qdisc).
    DevSend = 3,
    /// The driver was handed the packet (`net_dev_start_xmit`): after qdisc wait.
    DevXmit = 4,
    /// The packet arrived on a named interface (XDP or TC ingress).
    DevRecv = 16,
    /// The packet entered the IP stack (`netif_receive_skb`).
    IpRecv = 17,
    /// TCP accepted the segment (`tcp_probe` / established-state receive).
    TcpRecv = 18,
    /// The bytes were queued on the socket and the reader woken (`sk_data_ready`).
    SockQueue = 19,
    /// The application read this byte (`recvmsg`/`read` returned it).
    SockRecv = 20,
}

impl Layer {
    pub const ALL: [Layer; 10] = [
        Layer::SockSend,
        Layer::TcpSend,
        Layer::IpSend,
        Layer::DevSend,
        Layer::DevXmit,
        Layer::DevRecv,
        Layer::IpRecv,
        Layer::TcpRecv,
        Layer::SockQueue,
        Layer::SockRecv,
    ];

    pub const fn from_u8(v: u8) -> Option<Layer> {
        Some(match v {
            0 => Layer::SockSend,
            1 => Layer::TcpSend,
            2 => Layer::IpSend,
            3 => Layer::DevSend,
            4 => Layer::DevXmit,
            16 => Layer::DevRecv,
            17 => Layer::IpRecv,
            18 => Layer::TcpRecv,
            19 => Layer::SockQueue,
            20 => Layer::SockRecv,
            _ => return None,
        })
    }

    pub const fn direction(self) -> Direction {
        if (self as u8) < 16 {
            Direction::Send
        } else {
            Direction::Recv
        }
    }

    /// Whether observations at this layer are per interface (the interface names a hop).
    pub const fn is_interface_layer(self) -> bool {
        matches!(self, Layer::DevSend | Layer::DevXmit | Layer::DevRecv)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Layer::SockSend => "sock_send",
            Layer::TcpSend => "tcp_send",
            Layer::IpSend => "ip_send",
            Layer::DevSend => "dev_send",
            Layer::DevXmit => "dev_xmit",
            Layer::DevRecv => "dev_recv",
            Layer::IpRecv => "ip_recv",
            Layer::TcpRecv => "tcp_recv",
            Layer::SockQueue => "sock_queue",
            Layer::SockRecv => "sock_recv",
        }
    }

    /// Every layer's name, in path order (for messages that list what is known).
    pub fn names() -> impl Iterator<Item = &'static str> {
        Layer::ALL.into_iter().map(Layer::name)
    }

    pub fn from_name(name: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Number of distinct layer slots used for per-layer counters (indexes by `index()`).
    pub const SLOTS: usize = 10;

    /// A dense index for per-layer counter arrays.
    pub const fn index(self) -> usize {
        match self {
            Layer::SockSend => 0,
            Layer::TcpSend => 1,
            Layer::IpSend => 2,
            Layer::DevSend => 3,
            Layer::DevXmit => 4,
            Layer::DevRecv => 5,
            Layer::IpRecv => 6,
            Layer::TcpRecv => 7,
            Layer::SockQueue => 8,
            Layer::SockRecv => 9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_numbers_round_trip_and_index_densely() {
        for (i, l) in Layer::ALL.into_iter().enumerate() {
            assert_eq!(Layer::from_u8(l as u8), Some(l));
            assert_eq!(Layer::from_name(l.name()), Some(l));
            assert_eq!(l.index(), i);
        }
        assert_eq!(Layer::from_u8(99), None);
    }

    #[test]
    fn send_layers_precede_receive_layers() {
        assert_eq!(Layer::DevXmit.direction(), Direction::Send);
        assert_eq!(Layer::DevRecv.direction(), Direction::Recv);
        assert!(Layer::SockSend < Layer::DevSend && Layer::DevRecv < Layer::SockRecv);
    }
}
