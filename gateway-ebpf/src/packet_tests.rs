use super::*;
use crate::test_frames::Frame;

#[test]
fn parses_the_shapes_gateways_receive() {
    // (what, frame, expected l3 offset, l4 offset, payload offset)
    let cases = [
        ("plain IPv4", Frame::default(), 14, 34, 54),
        (
            "IPv4 with options",
            Frame {
                ipv4_options: 12,
                ..Frame::default()
            },
            14,
            46,
            66,
        ),
        (
            "TCP options (timestamps)",
            Frame {
                tcp_options: 12,
                ..Frame::default()
            },
            14,
            34,
            66,
        ),
        (
            "one VLAN tag",
            Frame {
                vlan_tags: 1,
                ..Frame::default()
            },
            18,
            38,
            58,
        ),
        (
            "QinQ",
            Frame {
                vlan_tags: 2,
                ..Frame::default()
            },
            22,
            42,
            62,
        ),
        (
            "IPv6",
            Frame {
                ip: IpVersion::V6,
                ..Frame::default()
            },
            14,
            54,
            74,
        ),
        (
            "IPv6 in VLAN",
            Frame {
                ip: IpVersion::V6,
                vlan_tags: 1,
                ..Frame::default()
            },
            18,
            58,
            78,
        ),
    ];
    for (what, frame, l3, l4, payload) in cases {
        let bytes = frame.build();
        let h = parse_headers(bytes.as_slice()).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!(
            (h.l3_offset, h.l4_offset, h.payload_offset),
            (l3, l4, payload),
            "{what}"
        );
        assert_eq!(h.dst_port, 443, "{what}");
        assert_eq!(h.src_port, 40000, "{what}");
        assert_eq!(h.payload_len, 5, "{what}");
        assert_eq!(h.ip, frame.ip, "{what}");
        assert_eq!(h.tcp_flags, 0x18, "{what}");
    }
}

#[test]
fn refuses_what_it_cannot_decide_on() {
    let udp = Frame {
        protocol: 17,
        ..Frame::default()
    }
    .build();
    assert_eq!(parse_headers(udp.as_slice()), Err(HeaderError::NotTcp));

    let v6_ext = Frame {
        ip: IpVersion::V6,
        protocol: 0,
        ..Frame::default()
    }
    .build();
    assert_eq!(parse_headers(v6_ext.as_slice()), Err(HeaderError::NotTcp));

    for fragment in [0x2000, 0x0010, 0x2010] {
        let frag = Frame {
            fragment,
            ..Frame::default()
        }
        .build();
        assert_eq!(
            parse_headers(frag.as_slice()),
            Err(HeaderError::Fragment),
            "{fragment:#x}"
        );
    }

    let mut arp = Frame::default().build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(parse_headers(arp.as_slice()), Err(HeaderError::NotIp));

    // Three VLAN tags: the third tag's ethertype is not IP.
    let deep = Frame {
        vlan_tags: 3,
        ..Frame::default()
    }
    .build();
    assert_eq!(parse_headers(deep.as_slice()), Err(HeaderError::NotIp));
}

/// The parser reads up to the TCP flags byte; options and payload are read later, from the
/// packet itself, by whoever needs them.
#[test]
fn every_truncation_is_malformed_never_a_panic() {
    for frame in [
        Frame::default(),
        Frame {
            ip: IpVersion::V6,
            vlan_tags: 2,
            ..Frame::default()
        },
        Frame {
            ipv4_options: 40,
            tcp_options: 40,
            ..Frame::default()
        },
    ] {
        let bytes = frame.build();
        let l4 = parse_headers(bytes.as_slice())
            .expect("whole frame parses")
            .l4_offset;
        let needed = l4 + 14;
        for cut in 0..needed {
            assert_eq!(
                parse_headers(&bytes[..cut]),
                Err(HeaderError::Malformed),
                "cut at {cut}"
            );
        }
        for cut in needed..bytes.len() {
            assert!(parse_headers(&bytes[..cut]).is_ok(), "cut at {cut}");
        }
    }
}

#[test]
fn lengths_that_do_not_add_up_are_malformed() {
    let mut bad_ihl = Frame::default().build();
    bad_ihl[14] = 0x44; // IHL of 16 bytes
    assert_eq!(
        parse_headers(bad_ihl.as_slice()),
        Err(HeaderError::Malformed)
    );

    let mut bad_doff = Frame::default().build();
    bad_doff[34 + 12] = 0x40; // data offset of 16 bytes
    assert_eq!(
        parse_headers(bad_doff.as_slice()),
        Err(HeaderError::Malformed)
    );

    let mut short_total = Frame::default().build();
    short_total[16..18].copy_from_slice(&30u16.to_be_bytes()); // ends inside the TCP header
    assert_eq!(
        parse_headers(short_total.as_slice()),
        Err(HeaderError::Malformed)
    );

    let mut wrong_version = Frame::default().build();
    wrong_version[14] = 0x65;
    assert_eq!(
        parse_headers(wrong_version.as_slice()),
        Err(HeaderError::Malformed)
    );
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut padded = Frame {
        payload: 0,
        ..Frame::default()
    }
    .build();
    padded.extend_from_slice(&[0; 6]); // minimum-frame padding
    let h = parse_headers(padded.as_slice()).expect("parses");
    assert_eq!(h.payload_len, 0);
}
