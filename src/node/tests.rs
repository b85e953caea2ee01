//! In-process tests of the node: real swarms on loopback TCP, talking the shard protocol.

use std::time::Duration;

use super::*;
use crate::ids::ShardId;
use crate::node::protocol::Refusal;
use crate::pipeline::erasure::shard_id;

async fn node(dir: &std::path::Path, name: &str, offer: Option<u64>) -> Node {
    node_allowing(dir, name, offer, vec![]).await
}

async fn node_allowing(
    dir: &std::path::Path,
    name: &str,
    offer: Option<u64>,
    allow: Vec<PeerId>,
) -> Node {
    Node::start(NodeConfig {
        key_file: dir.join(format!("{name}.key")),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        mdns: false,
        store: offer.map(|o| (dir.join(format!("{name}-shards")), o)),
        owner_share: 1.0,
        leases: Default::default(),
        allow,
    })
    .await
    .unwrap()
}

/// Waits until `h` knows `peer` as a pool peer with its space.
async fn until_pool_peer(h: &NodeHandle, peer: PeerId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if h.pool_peers()
            .iter()
            .any(|(p, s)| *p == peer && s.info_at.is_some())
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peer never became a pool peer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_are_stored_served_and_released_only_by_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = node(dir.path(), "store", Some(10_000)).await;
    let alice = node(dir.path(), "alice", None).await;
    let mallory = node(dir.path(), "mallory", None).await;
    let (s, a, m) = (store.handle(), alice.handle(), mallory.handle());
    let addr = s
        .listen_addrs()
        .into_iter()
        .next()
        .expect("a listen address");
    assert!(
        addr.to_string().ends_with(&format!("/p2p/{}", s.id)),
        "{addr}"
    );
    assert_eq!(a.dial(addr.clone()).await.unwrap(), s.id);
    m.dial(addr).await.unwrap();
    until_pool_peer(&a, s.id).await;
    let info = a.peers.get(&s.id).unwrap();
    assert_eq!((info.offered, info.used), (10_000, 0));

    let bytes = vec![7u8; 4000];
    let id = shard_id(&bytes);
    a.client.put(s.id, id, &bytes).await.unwrap();
    assert_eq!(a.client.get(s.id, id).await.unwrap(), bytes);
    // Anyone may read a shard (it is ciphertext), only its owner knows it holds it...
    assert_eq!(m.client.get(s.id, id).await.unwrap(), bytes);
    assert_eq!(a.client.has(s.id, &[id]).await.unwrap(), vec![true]);
    assert_eq!(m.client.has(s.id, &[id]).await.unwrap(), vec![false]);
    // ... and only its owner may release it.
    assert_eq!(m.client.release(s.id, &[id]).await.unwrap(), 0);
    assert!(a.client.get(s.id, id).await.is_ok());

    // Bytes that do not hash to the id are refused, as is more than the offer.
    let wrong = a.client.put(s.id, shard_id(b"other"), &bytes).await;
    assert!(
        matches!(wrong, Err(ClientError::Refused(Refusal::BadHash))),
        "{wrong:?}"
    );
    let big = vec![1u8; 7000];
    let over = a.client.put(s.id, shard_id(&big), &big).await;
    assert!(
        matches!(over, Err(ClientError::Refused(Refusal::OfferFull))),
        "{over:?}"
    );
    assert_eq!(
        s.store.as_ref().unwrap().used(),
        4000,
        "a refused put stores nothing"
    );

    assert_eq!(a.client.release(s.id, &[id]).await.unwrap(), 1);
    assert!(matches!(
        a.client.get(s.id, id).await,
        Err(ClientError::NotFound)
    ));
    assert_eq!(s.store.as_ref().unwrap().used(), 0);
    // A node without a store refuses to hold anything.
    let none = s.client.put(a.id, id, &bytes).await;
    assert!(
        matches!(none, Err(ClientError::Refused(Refusal::OfferFull))),
        "{none:?}"
    );
    for n in [store, alice, mallory] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_shard_protocol_is_dropped_and_counted() {
    use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let store = node(dir.path(), "store", Some(1 << 20)).await;
    let evil = node(dir.path(), "evil", None).await;
    let (s, e) = (store.handle(), evil.handle());
    e.dial(s.listen_addrs()[0].clone()).await.unwrap();
    for junk in [
        vec![0xff, 0xff, 0xff, 0xff], // frame length far over the bound
        vec![0, 0, 0, 3, 9, 1, 0],    // unknown version
        vec![0, 0, 0, 2, protocol::VERSION, 99], // unknown kind
    ] {
        let mut control = e.client.control.clone();
        let mut st = control
            .open_stream(s.id, behaviour::SHARD_PROTOCOL)
            .await
            .unwrap();
        st.write_all(&junk).await.unwrap();
        let _ = st.close().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), st.read_to_end(&mut out)).await;
        assert!(out.len() <= 64, "no large answer to junk");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.peers.get(&e.id).map_or(0, |p| p.bad_messages) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad messages not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node still serves.
    let bytes = vec![3u8; 100];
    e.client.put(s.id, shard_id(&bytes), &bytes).await.unwrap();
    store.stop().await;
    evil.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_pool_serves_its_members_only() {
    let dir = tempfile::tempdir().unwrap();
    let alice = node(dir.path(), "alice", None).await;
    let mallory = node(dir.path(), "mallory", None).await;
    let (a, m) = (alice.handle(), mallory.handle());
    let store = node_allowing(dir.path(), "store", Some(10_000), vec![a.id]).await;
    let s = store.handle();
    let addr = s.listen_addrs().into_iter().next().unwrap();
    a.dial(addr.clone()).await.unwrap();
    until_pool_peer(&a, s.id).await;
    let bytes = vec![3u8; 1000];
    let id = shard_id(&bytes);
    a.client.put(s.id, id, &bytes).await.unwrap();

    // A non-member's connection is closed at once; its requests get nothing.
    let _ = m.dial(addr).await;
    let got = tokio::time::timeout(Duration::from_secs(30), m.client.get(s.id, id))
        .await
        .expect("the request ends");
    assert!(got.is_err(), "a non-member read a shard: {got:?}");
    let put = m.client.put(s.id, shard_id(b"x"), b"x").await;
    assert!(put.is_err(), "a non-member stored a shard: {put:?}");
    assert_eq!(s.store.as_ref().unwrap().used(), 1000);
    assert!(!s.peers.get(&m.id).is_some_and(|p| p.connected));
    // The member is served as before.
    assert_eq!(a.client.get(s.id, id).await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_peer_is_bounded_counted_and_cut_off() {
    use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let store = node(dir.path(), "store", Some(1 << 20)).await;
    let flooder = node(dir.path(), "flooder", None).await;
    let honest = node(dir.path(), "honest", None).await;
    let (s, f, h) = (store.handle(), flooder.handle(), honest.handle());
    let addr = s.listen_addrs()[0].clone();
    f.dial(addr.clone()).await.unwrap();
    h.dial(addr).await.unwrap();
    let ask = |req: protocol::Request, body: bool| {
        let mut control = f.client.control.clone();
        let peer = s.id;
        async move {
            let mut st = control
                .open_stream(peer, behaviour::SHARD_PROTOCOL)
                .await
                .ok()?;
            st.write_all(&req.encode()).await.ok()?;
            if body {
                let _ = st.close().await;
            }
            let mut head = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), st.read_exact(&mut head))
                .await
                .ok()?
                .ok()?;
            let mut frame = vec![0u8; protocol::frame_len(head).ok()?];
            st.read_exact(&mut frame).await.ok()?;
            protocol::Response::decode(&frame).ok()
        }
    };
    // Puts whose bodies never come hold the flooder's whole share of the node. The node
    // may drop a stream it gets while busy accepting another (libp2p-stream's one-slot
    // queue), so stalled puts are added until a probe is answered Busy.
    let mut stalled = Vec::new();
    for i in 0..4 * server::PER_PEER {
        if stalled.len() >= server::PER_PEER
            && ask(protocol::Request::Info, true).await
                == Some(protocol::Response::Refused(Refusal::Busy))
        {
            break;
        }
        let mut control = f.client.control.clone();
        let req = protocol::Request::Put {
            id: ShardId([i as u8; 32]),
            len: 1000,
        };
        let Ok(mut st) = control.open_stream(s.id, behaviour::SHARD_PROTOCOL).await else {
            continue;
        };
        if st.write_all(&req.encode()).await.is_ok() {
            stalled.push(st);
        }
    }
    assert_eq!(
        ask(protocol::Request::Info, true).await,
        Some(protocol::Response::Refused(Refusal::Busy)),
        "the flooder's share is taken"
    );
    // ... so each request past it is answered Busy at once, and counted.
    // Until, a hundred floods on, its score bans it and it gets no answer at all.
    let mut busy = 0;
    for _ in 0..120 {
        match ask(protocol::Request::Info, true).await {
            Some(protocol::Response::Refused(Refusal::Busy)) => busy += 1,
            None => break,
            other => panic!("a flood request was served: {other:?}"),
        }
    }
    assert!(busy >= 80, "only {busy} refused as busy before the ban");
    let state = s.peers.get(&f.id).unwrap();
    assert!(state.floods >= 100 && state.banned(), "{state:?}");
    // Another peer is served as if nothing happened.
    let bytes = vec![9u8; 500];
    h.client.put(s.id, shard_id(&bytes), &bytes).await.unwrap();
    assert_eq!(h.client.get(s.id, shard_id(&bytes)).await.unwrap(), bytes);
    // The flooder, banned by its score, gets no answer at all now.
    drop(stalled);
    assert_eq!(ask(protocol::Request::Info, true).await, None);
    for n in [store, flooder, honest] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_records_are_kept_newest_first_and_cannot_be_forged() {
    use crate::node::root::{RootRecord, keypair, locator};
    let dir = tempfile::tempdir().unwrap();
    let store = node(dir.path(), "store", Some(10_000)).await;
    let owner = node(dir.path(), "owner", None).await;
    let stranger = node(dir.path(), "stranger", None).await;
    let (s, o, x) = (store.handle(), owner.handle(), stranger.handle());
    let addr = s.listen_addrs().into_iter().next().unwrap();
    o.dial(addr.clone()).await.unwrap();
    x.dial(addr).await.unwrap();
    let key = keypair(&[4; 32]);
    let rec = |seq: u64, payload: &[u8]| RootRecord::sign(&key, seq, payload.to_vec()).unwrap();
    // A peer that stores nothing here adds no record.
    assert!(matches!(
        o.client.put_root(s.id, &rec(1, b"one").encode()).await,
        Err(ClientError::Refused(Refusal::OfferFull))
    ));
    let bytes = vec![1u8; 1000];
    o.client.put(s.id, shard_id(&bytes), &bytes).await.unwrap();
    o.client
        .put_root(s.id, &rec(2, b"two").encode())
        .await
        .unwrap();
    assert!(matches!(
        o.client.put_root(s.id, &rec(1, b"one").encode()).await,
        Err(ClientError::Refused(Refusal::Stale))
    ));
    // Anyone may read it (the payload is ciphertext) and checks it against the locator.
    let got = x
        .client
        .get_root(s.id, locator(&key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.seq, got.payload.as_slice()), (2, &b"two"[..]));
    assert!(x.client.get_root(s.id, [9; 32]).await.unwrap().is_none());
    // A record signed by another key under this locator is refused.
    let mut forged = RootRecord::sign(&keypair(&[5; 32]), 9, b"mine".to_vec())
        .unwrap()
        .encode();
    forged[4..36].copy_from_slice(&locator(&key));
    assert!(matches!(
        x.client.put_root(s.id, &forged).await,
        Err(ClientError::Refused(Refusal::BadRecord))
    ));
    // A newer one from the owner replaces it.
    o.client
        .put_root(s.id, &rec(3, b"three").encode())
        .await
        .unwrap();
    let got = o
        .client
        .get_root(s.id, locator(&key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.seq, 3);
}
