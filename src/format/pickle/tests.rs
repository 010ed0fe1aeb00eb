//! Tests of the pickle machine: every opcode, memo sharing, limits, hand-made pickles.

use super::*;

fn p(b: &[u8]) -> Pickle {
    parse(b, &Limits::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn err(b: &[u8]) -> PickleErrorKind {
    parse(b, &Limits::default())
        .err()
        .map(|e| e.kind)
        .unwrap_or_else(|| panic!("expected an error"))
}

fn root(b: &[u8]) -> Node {
    let pk = p(b);
    pk.node(pk.root).clone()
}

fn items(pk: &Pickle, id: NodeId) -> Vec<Node> {
    match pk.node(id) {
        Node::Tuple(xs) | Node::List(xs) | Node::Set(xs) | Node::FrozenSet(xs) => {
            xs.iter().map(|&i| pk.node(i).clone()).collect()
        }
        other => panic!("not a sequence: {other:?}"),
    }
}

#[test]
fn constants_and_ints() {
    assert_eq!(root(b"N."), Node::None);
    assert_eq!(root(b"\x88."), Node::Bool(true));
    assert_eq!(root(b"\x89."), Node::Bool(false));
    assert_eq!(root(b"I00\n."), Node::Bool(false));
    assert_eq!(root(b"I01\n."), Node::Bool(true));
    assert_eq!(root(b"I-42\n."), Node::Int(-42));
    assert_eq!(root(b"L123L\n."), Node::Int(123));
    assert_eq!(root(b"J\xff\xff\xff\xff."), Node::Int(-1));
    assert_eq!(root(b"K\xff."), Node::Int(255));
    assert_eq!(root(b"M\xff\xff."), Node::Int(65535));
    assert_eq!(root(b"\x8a\x00."), Node::Int(0));
    assert_eq!(root(b"\x8a\x01\xff."), Node::Int(-1));
    assert_eq!(root(b"\x8a\x02\x00\x80."), Node::Int(-32768));
    assert_eq!(root(b"\x8a\x03\x00\x80\x00."), Node::Int(32768));
    assert_eq!(
        root(b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80."),
        Node::Int(i64::MIN)
    );
    // 2**70 as LONG1 and LONG4 and protocol-0 LONG.
    let big = root(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x40.");
    match &big {
        Node::BigInt(b) => assert_eq!(bigint_to_decimal(b), "1180591620717411303424"),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        root(b"\x8b\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x40."),
        big
    );
    assert_eq!(root(b"L1180591620717411303424L\n."), big);
    // Sign-redundant long bytes still give an Int.
    assert_eq!(
        root(b"\x8a\x0a\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00."),
        Node::Int(5)
    );
}

#[test]
fn floats() {
    assert_eq!(root(b"G?\xf8\x00\x00\x00\x00\x00\x00."), Node::Float(1.5));
    assert_eq!(root(b"F-2.25\n."), Node::Float(-2.25));
    match root(b"Fnan\n.") {
        Node::Float(f) => assert!(f.is_nan()),
        o => panic!("{o:?}"),
    }
}

#[test]
fn strings_and_bytes() {
    assert_eq!(root(b"X\x02\x00\x00\x00hi."), Node::Str("hi".into()));
    assert_eq!(root(b"\x8c\x02hi."), Node::Str("hi".into()));
    assert_eq!(
        root(b"\x8d\x02\x00\x00\x00\x00\x00\x00\x00hi."),
        Node::Str("hi".into())
    );
    assert_eq!(root(b"Vh\\u00e9\n."), Node::Str("h\u{e9}".into()));
    assert_eq!(root(b"S'a\\nb'\n."), Node::ByteStr(b"a\nb"[..].into()));
    assert_eq!(root(b"T\x01\x00\x00\x00z."), Node::ByteStr(b"z"[..].into()));
    assert_eq!(root(b"U\x01z."), Node::ByteStr(b"z"[..].into()));
    assert_eq!(
        root(b"B\x01\x00\x00\x00\x00."),
        Node::Bytes(b"\0"[..].into())
    );
    assert_eq!(root(b"C\x01\x07."), Node::Bytes(b"\x07"[..].into()));
    assert_eq!(
        root(b"\x8e\x01\x00\x00\x00\x00\x00\x00\x00\x07."),
        Node::Bytes(b"\x07"[..].into())
    );
    assert_eq!(
        root(b"\x96\x01\x00\x00\x00\x00\x00\x00\x00\x07."),
        Node::ByteArray(b"\x07"[..].into())
    );
    // Lone surrogate written with surrogatepass.
    assert_eq!(
        root(b"X\x03\x00\x00\x00\xed\xa0\x80."),
        Node::Str("\u{fffd}".into())
    );
}

#[test]
fn containers() {
    let pk = p(b"(K\x01K\x02t.");
    assert_eq!(items(&pk, pk.root), vec![Node::Int(1), Node::Int(2)]);
    let pk = p(b"K\x01\x85.");
    assert_eq!(items(&pk, pk.root).len(), 1);
    let pk = p(b"K\x01K\x02\x86.");
    assert_eq!(items(&pk, pk.root).len(), 2);
    let pk = p(b"K\x01K\x02K\x03\x87.");
    assert_eq!(items(&pk, pk.root).len(), 3);
    assert_eq!(root(b")."), Node::Tuple(vec![]));
    let pk = p(b"]K\x01a(K\x02K\x03e.");
    assert_eq!(
        items(&pk, pk.root),
        vec![Node::Int(1), Node::Int(2), Node::Int(3)]
    );
    let pk = p(b"(K\x01l.");
    assert_eq!(items(&pk, pk.root), vec![Node::Int(1)]);
    let pk = p(b"}K\x01K\x02s(K\x03K\x04u.");
    assert!(matches!(pk.node(pk.root), Node::Dict(d) if d.len() == 2));
    let pk = p(b"(K\x01K\x02d.");
    assert!(matches!(pk.node(pk.root), Node::Dict(d) if d.len() == 1));
    let pk = p(b"\x8f(K\x01K\x02\x90.");
    assert_eq!(items(&pk, pk.root).len(), 2);
    let pk = p(b"(K\x01\x91.");
    assert!(matches!(pk.node(pk.root), Node::FrozenSet(_)));
}

#[test]
fn stack_ops_and_memo() {
    assert_eq!(root(b"K\x01K\x020."), Node::Int(1));
    assert_eq!(root(b"K\x01(K\x02K\x031."), Node::Int(1));
    let pk = p(b"]2\x86.");
    let (a, b) = match pk.node(pk.root) {
        Node::Tuple(xs) => (xs[0], xs[1]),
        o => panic!("{o:?}"),
    };
    assert_eq!(a, b, "DUP pushes the same object");
    // PUT/GET variants share the object, not a copy.
    for prog in [
        &b"]q\x00h\x00\x86."[..],
        b"]r\x00\x00\x00\x00j\x00\x00\x00\x00\x86.",
        b"]p0\ng0\n\x86.",
        b"]\x94h\x00\x86.",
    ] {
        let pk = p(prog);
        match pk.node(pk.root) {
            Node::Tuple(xs) => assert_eq!(xs[0], xs[1]),
            o => panic!("{o:?}"),
        }
    }
    assert_eq!(err(b"h\x05."), PickleErrorKind::MemoMissing(5));
}

#[test]
fn globals_and_calls_are_data() {
    let pk = p(b"cos\nsystem\nX\x02\x00\x00\x00ls\x85R.");
    match pk.node(pk.root) {
        Node::Call(c) => {
            assert_eq!(c.kind, CallKind::Reduce);
            assert!(
                matches!(pk.node(c.callable), Node::Global(g) if &*g.module == "os" && &*g.name == "system")
            );
        }
        o => panic!("{o:?}"),
    }
    let pk = p(b"\x8c\x08builtins\x8c\x04eval\x93.");
    assert!(matches!(pk.node(pk.root), Node::Global(g) if &*g.name == "eval"));
    let pk = p(b"(X\x01\x00\x00\x00aios\nsystem\n.");
    assert!(matches!(pk.node(pk.root), Node::Call(c) if c.kind == CallKind::Inst));
    let pk = p(b"(cos\nsystem\nX\x01\x00\x00\x00ao.");
    assert!(matches!(pk.node(pk.root), Node::Call(c) if c.kind == CallKind::Obj));
    let pk = p(b"c__main__\nFoo\n)\x81}X\x01\x00\x00\x00aK\x01sb.");
    match pk.node(pk.root) {
        Node::Call(c) => {
            assert_eq!(c.kind, CallKind::NewObj);
            assert_eq!(c.states.len(), 1);
        }
        o => panic!("{o:?}"),
    }
    let pk = p(b"c__main__\nFoo\n)}\x92.");
    assert!(
        matches!(pk.node(pk.root), Node::Call(c) if c.kind == CallKind::NewObjEx && c.kwargs.is_some())
    );
    let pk = p(b"ccollections\nOrderedDict\n)R(K\x01K\x02u.");
    assert!(matches!(pk.node(pk.root), Node::Call(c) if c.items.len() == 1));
    assert!(matches!(root(b"\x82\x05."), Node::Ext { code: 5, .. }));
    assert!(matches!(
        root(b"\x83\x05\x01."),
        Node::Ext { code: 261, .. }
    ));
    assert!(matches!(
        root(b"\x84\x05\x00\x00\x00."),
        Node::Ext { code: 5, .. }
    ));
}

#[test]
fn persistent_ids_and_protocol() {
    let pk = p(b"\x80\x02(X\x07\x00\x00\x00storagetQ.");
    assert_eq!(pk.protocol, 2);
    assert!(matches!(pk.node(pk.root), Node::PersId(_)));
    assert!(matches!(root(b"Pabc\n."), Node::PersId(_)));
    let pk = p(b"\x80\x05\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x01.");
    assert_eq!(pk.protocol, 5);
    assert_eq!(pk.consumed, 14);
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    assert!(matches!(err(b""), PickleErrorKind::Truncated(_)));
    assert!(matches!(err(b"K"), PickleErrorKind::Truncated(_)));
    assert!(matches!(err(b"N"), PickleErrorKind::Truncated(_)));
    assert!(matches!(err(b"."), PickleErrorKind::Stack(_)));
    assert!(matches!(
        err(b"\xff."),
        PickleErrorKind::UnknownOpcode(0xff)
    ));
    assert!(matches!(err(b"t."), PickleErrorKind::Stack(_)));
    assert!(matches!(
        err(b"X\xff\xff\xff\x7f."),
        PickleErrorKind::LengthPastEnd { .. }
    ));
    assert!(matches!(
        err(b"\x8e\xff\xff\xff\xff\xff\xff\xff\x0f."),
        PickleErrorKind::LengthPastEnd { .. }
    ));
    assert!(matches!(
        err(b"\x8b\xff\xff\xff\x7f."),
        PickleErrorKind::Limit { .. }
    ));
    assert!(matches!(
        err(b"\x95\xff\xff\x00\x00\x00\x00\x00\x00N."),
        PickleErrorKind::LengthPastEnd { .. }
    ));
    assert!(matches!(
        err(b"]K\x01K\x02s."),
        PickleErrorKind::WrongTarget(_)
    ));
    assert!(matches!(err(b"}K\x01a."), PickleErrorKind::WrongTarget(_)));
    assert!(matches!(err(b"K\x01}b."), PickleErrorKind::WrongTarget(_)));
    assert!(matches!(err(b"(K\x01d."), PickleErrorKind::Stack(_)));
    assert!(matches!(err(b"\x97."), PickleErrorKind::OutOfBand));
    // A MARK hides the values below it.
    assert!(matches!(err(b"K\x01(0."), PickleErrorKind::Stack(_)));
}

/// Python's unpickler hashes every dict key and set element as it stores it, so a list (or a
/// dict, set, bytearray, OrderedDict, or a tuple holding one) there raises `TypeError:
/// unhashable type` at that opcode, and torch.load refuses the file.
#[test]
fn unhashable_keys_are_refused_at_their_opcode() {
    /// (offset, type name, used as) of the unhashable error `b` must give.
    fn unhashable(b: &[u8]) -> (u64, &'static str, &'static str) {
        match parse(b, &Limits::default()) {
            Err(PickleError {
                offset,
                kind: PickleErrorKind::Unhashable { type_name, used_as },
            }) => (offset, type_name, used_as),
            other => panic!("{b:?}: expected an unhashable error, got {other:?}"),
        }
    }
    // } ] K\x01 s: the SETITEM at byte 4 stores a list key.
    assert_eq!(unhashable(b"}]K\x01s."), (4, "list", "dict key"));
    let msg = parse(b"}]K\x01s.", &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("TypeError: unhashable type: 'list'")
            && msg.ends_with("(pickle byte offset 4)"),
        "{msg}"
    );
    // SETITEMS (byte 9), DICT (byte 4), the key a dict, a set, a bytearray.
    assert_eq!(unhashable(b"}(K\x01K\x02]K\x03u.").0, 9);
    assert_eq!(unhashable(b"(}K\x01d."), (4, "dict", "dict key"));
    assert_eq!(unhashable(b"}\x8fK\x01s.").1, "set");
    let bytearray = b"\x80\x05}\x96\x01\x00\x00\x00\x00\x00\x00\x00xK\x01s.";
    assert_eq!(unhashable(bytearray).1, "bytearray");
    // Tuples are hashable only when what they hold is, nested tuples included.
    assert_eq!(unhashable(b"}(K\x01]tK\x02s."), (8, "list", "dict key"));
    assert_eq!(unhashable(b"}]\x85\x85K\x01s."), (6, "list", "dict key"));
    // Values built by calls that make lists, sets, dicts or OrderedDicts.
    assert_eq!(unhashable(b"}cbuiltins\nset\n)RK\x01s.").1, "set");
    assert_eq!(
        unhashable(b"}ccollections\nOrderedDict\n)RK\x01s.").1,
        "collections.OrderedDict"
    );
    // SETITEMS on an OrderedDict (torch's state_dict) hashes its keys too.
    let od = b"ccollections\nOrderedDict\n)R(]K\x01u.";
    assert_eq!(unhashable(od), (od.len() as u64 - 2, "list", "dict key"));
    // Set elements: ADDITEMS (byte 3) and FROZENSET (byte 2).
    assert_eq!(unhashable(b"\x8f(]\x90."), (3, "list", "set element"));
    assert_eq!(unhashable(b"(]\x91."), (2, "list", "set element"));

    // Hashable keys stay fine: tuples of hashables, frozensets, objects of other classes,
    // globals; a class of its own may take any key in its __setitem__; lists as values.
    for ok in [
        &b"}(K\x01K\x02tK\x03s."[..],
        b"}(K\x01\x91K\x03s.",
        b"}c__main__\nFoo\n)RK\x01s.",
        b"}cbuiltins\nlist\nK\x01s.",
        b"c__main__\nFoo\n)R]K\x01s.",
        b"}K\x01]s.",
    ] {
        p(ok);
    }
}

#[test]
fn memo_doubling_bomb_costs_one_node_per_opcode() {
    // l = [x]; repeat 100 times: l = [l, l]  (2**100 leaves if expanded)
    let mut b = b"]q\x00".to_vec();
    for _ in 0..100 {
        b.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    b.push(b'.');
    let pk = p(&b);
    assert!(pk.len() < 200, "{} nodes", pk.len());
}

#[test]
fn limits_are_enforced() {
    let lim = Limits {
        max_nodes: 10,
        ..Limits::default()
    };
    let mut b = vec![];
    for _ in 0..20 {
        b.extend_from_slice(b"K\x01");
    }
    b.push(b'.');
    assert!(matches!(
        parse(&b, &lim).unwrap_err().kind,
        PickleErrorKind::Limit { .. }
    ));
    let lim = Limits {
        max_marks: 5,
        ..Limits::default()
    };
    assert!(matches!(
        parse(&[b'('; 10], &lim).unwrap_err().kind,
        PickleErrorKind::Limit { .. }
    ));
    // A million nested lists parse iteratively (no recursion).
    let mut b = vec![b']'; 1_000_000];
    b.extend(std::iter::repeat_n(b'a', 999_999));
    b.push(b'.');
    assert!(parse(&b, &Limits::default()).is_ok());
}

#[test]
fn writer_output_parses_back() {
    let mut w = PickleWriter::new();
    w.empty_dict();
    w.mark();
    w.str("a");
    w.int(-5);
    w.str("b");
    w.int(1 << 40);
    w.str("c");
    w.float(2.5);
    w.str("a"); // memoized: BINGET
    w.bytes(b"\x00\xff");
    w.setitems();
    let b = w.finish();
    let pk = p(&b);
    match pk.node(pk.root) {
        Node::Dict(items) => {
            assert_eq!(items.len(), 4);
            assert_eq!(pk.node(items[1].1), &Node::Int(1 << 40));
            assert_eq!(pk.node(items[0].1), &Node::Int(-5));
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn node_stays_small() {
    // The arena holds up to Limits::max_nodes of these.
    assert!(
        std::mem::size_of::<Node>() <= 32,
        "{}",
        std::mem::size_of::<Node>()
    );
}
