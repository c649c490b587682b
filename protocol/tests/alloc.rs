//! The hub's hot path: a reading is serialised once into a buffer sized in advance, and
//! building a `ServerMessage` from borrowed data allocates nothing. Counted with a global
//! allocator (this test binary only), so a change that adds a copy fails here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::cell::Cell;

use telehub_protocol::outbound::{Reading, ServerMessage};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: as for `dealloc`; the new size comes from the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn a_reading_serialises_with_one_allocation_its_buffer() {
    let (room, device, metric, unit) = (
        String::from("greenhouse"),
        String::from("t1"),
        String::from("temperature"),
        String::from("C"),
    );
    let n = allocations(|| {
        let msg = ServerMessage::Reading(Reading {
            room: Cow::Borrowed(&room),
            device: Cow::Borrowed(&device),
            metric: Cow::Borrowed(&metric),
            value: 21.5,
            unit: Some(Cow::Borrowed(&unit)),
            ts: 1_764_000_000_000,
            seq: Some(17),
            offset: 1043,
        });
        // The hub's frame buffer: header room, then the JSON (see the hub's protocol.rs).
        let mut buf = Vec::with_capacity(160);
        buf.resize(10, 0);
        serde_json::to_writer(&mut buf, &msg).expect("serialises");
        assert!(buf.len() > 100);
    });
    assert_eq!(n, 1, "only the frame buffer is allocated");
}
