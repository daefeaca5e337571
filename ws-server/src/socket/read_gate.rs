//! Polls the client side of a connection only when it was woken.
//!
//! The connection's loop re-polls every `select!` branch after each hub event, and polling
//! the WebSocket's read side when nothing arrived still costs a trip through tungstenite and
//! tokio's readiness lock: about an eighth of the replica's CPU in a 1,000-client fan-out
//! (docs/benchmarks.md, "Where the time goes"). The read side is polled with a waker of its
//! own, which raises a flag; until it is raised, the gate answers `Pending` without polling.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::{Stream, task::AtomicWaker};

/// The flag the read side's waker raises, and the task to wake then.
#[derive(Default)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One connection's gate.
pub(super) struct ReadGate {
    flag: Arc<Flag>,
    waker: Waker,
}

impl ReadGate {
    pub(super) fn new() -> Self {
        // Raised at first: the stream has not registered a waker yet.
        let flag = Arc::new(Flag { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        Self { waker: Waker::from(flag.clone()), flag }
    }

    /// `stream.poll_next`, skipped while the stream has not woken since it last said `Pending`.
    pub(super) fn poll_next<S: Stream + ?Sized>(
        &self,
        stream: Pin<&mut S>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<S::Item>> {
        // Registered before the flag is read: a wake in between is not lost.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = stream.poll_next(&mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            // A ready stream registered no waker and may hold more: poll it next time too.
            self.flag.woken.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{future::poll_fn, stream};
    use tokio::sync::mpsc;

    /// A channel as a stream, counting its polls.
    struct Counted {
        rx: mpsc::UnboundedReceiver<u32>,
        polls: usize,
    }

    impl Stream for Counted {
        type Item = u32;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.polls += 1;
            self.rx.poll_recv(cx)
        }
    }

    #[test]
    fn polls_the_stream_only_after_it_woke() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = Counted { rx, polls: 0 };
        let gate = ReadGate::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(gate.poll_next(Pin::new(&mut s), &mut cx).is_pending());
        assert!(gate.poll_next(Pin::new(&mut s), &mut cx).is_pending());
        assert_eq!(s.polls, 1, "not woken: the second poll is skipped");
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(gate.poll_next(Pin::new(&mut s), &mut cx), Poll::Ready(Some(1)));
        assert_eq!(gate.poll_next(Pin::new(&mut s), &mut cx), Poll::Ready(Some(2)), "ready: polled again");
        assert!(gate.poll_next(Pin::new(&mut s), &mut cx).is_pending());
        assert!(gate.poll_next(Pin::new(&mut s), &mut cx).is_pending());
        assert_eq!(s.polls, 4);
    }

    #[tokio::test]
    async fn a_wake_reaches_the_task() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = Counted { rx, polls: 0 };
        let gate = ReadGate::new();
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(7).unwrap();
        });
        assert_eq!(poll_fn(|cx| gate.poll_next(Pin::new(&mut s), cx)).await, Some(7));
        sender.await.unwrap();
        // An ended stream stays ended.
        let mut done = stream::empty::<u32>();
        assert_eq!(poll_fn(|cx| ReadGate::new().poll_next(Pin::new(&mut done), cx)).await, None);
    }
}
