//! The local terminal: raw mode that is always undone (on return, on error,
//! on panic) and the window size.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

/// Switching the local terminal between raw and cooked mode.
pub trait RawMode: Send + Sync + 'static {
    fn enable(&self) -> io::Result<()>;
    fn disable(&self) -> io::Result<()>;
}

/// The real terminal, through crossterm (which saves the original settings
/// when entering raw mode and puts exactly those back).
#[derive(Debug, Clone, Copy)]
pub struct Crossterm;

impl RawMode for Crossterm {
    fn enable(&self) -> io::Result<()> {
        crossterm::terminal::enable_raw_mode()
    }
    fn disable(&self) -> io::Result<()> {
        crossterm::terminal::disable_raw_mode()
    }
}

type Restore = Box<dyn Fn() + Send>;

/// What the panic hook undoes: the terminal of the guard alive right now.
static ON_PANIC: Mutex<Option<Restore>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// A panic message printed in raw mode would be a staircase, and a process
/// that dies in raw mode leaves the shell unusable: the hook restores the
/// terminal first, then lets the usual hook print.
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut slot) = ON_PANIC.try_lock() {
                if let Some(restore) = slot.take() {
                    restore();
                }
            }
            previous(info);
        }));
    });
}

/// Raw mode for as long as it lives. Dropping it (normal return, `?`,
/// unwinding) or a panic anywhere restores the terminal, exactly once.
pub struct RawGuard {
    restore: Arc<dyn Fn() + Send + Sync>,
}

impl RawGuard {
    pub fn enable<M: RawMode>(mode: M) -> io::Result<RawGuard> {
        install_panic_hook();
        mode.enable()?;
        let active = Arc::new(AtomicBool::new(true));
        let mode = Arc::new(mode);
        let restore: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if active.swap(false, Ordering::SeqCst) {
                let _ = mode.disable();
            }
        });
        let for_hook = restore.clone();
        if let Ok(mut slot) = ON_PANIC.lock() {
            *slot = Some(Box::new(move || for_hook()));
        }
        Ok(RawGuard { restore })
    }

    /// Back to cooked mode now (idempotent).
    pub fn restore(&self) {
        (self.restore)();
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        self.restore();
        if let Ok(mut slot) = ON_PANIC.lock() {
            *slot = None;
        }
    }
}

/// The local window as (rows, cols), if it is a terminal with a size.
pub fn window_size() -> Option<(u16, u16)> {
    match crossterm::terminal::size() {
        Ok((cols, rows)) if rows > 0 && cols > 0 => Some((rows, cols)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Clone, Default)]
    struct Fake {
        enabled: Arc<AtomicUsize>,
        disabled: Arc<AtomicUsize>,
        fail: bool,
    }

    impl RawMode for Fake {
        fn enable(&self) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::other("not a tty"));
            }
            self.enabled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn disable(&self) -> io::Result<()> {
            self.disabled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// One test for all cases: the panic hook is process-wide.
    #[test]
    fn guard_restores_exactly_once_on_drop_error_and_panic() {
        // The hook that prints panic messages, standing in for the default
        // one: it records how many restores happened before it ran. Ours is
        // installed on top of it, as in the real program.
        let panic_fake = Fake::default();
        let probe = panic_fake.disabled.clone();
        let seen_by_printer = Arc::new(AtomicUsize::new(usize::MAX));
        let seen = seen_by_printer.clone();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |_| {
            seen.store(probe.load(Ordering::SeqCst), Ordering::SeqCst);
        }));
        install_panic_hook();

        // Plain drop.
        let fake = Fake::default();
        {
            let g = RawGuard::enable(fake.clone()).unwrap();
            assert_eq!(fake.enabled.load(Ordering::SeqCst), 1);
            assert_eq!(fake.disabled.load(Ordering::SeqCst), 0);
            g.restore();
            g.restore();
        }
        assert_eq!(fake.disabled.load(Ordering::SeqCst), 1);

        // Early return with an error.
        let fake = Fake::default();
        let f = || -> Result<(), String> {
            let _g = RawGuard::enable(fake.clone()).unwrap();
            Err("boom".into())
        };
        assert!(f().is_err());
        assert_eq!(fake.disabled.load(Ordering::SeqCst), 1);

        // A panic: restored before the message is printed, and the drop
        // during unwinding does not restore a second time.
        let in_panic = panic_fake.clone();
        let r = std::panic::catch_unwind(move || {
            let _g = RawGuard::enable(in_panic).unwrap();
            panic!("in raw mode");
        });
        assert!(r.is_err());
        assert_eq!(seen_by_printer.load(Ordering::SeqCst), 1);
        assert_eq!(
            panic_fake.disabled.load(Ordering::SeqCst),
            1,
            "exactly once"
        );
        assert!(ON_PANIC.lock().unwrap().is_none());

        // Enabling fails: nothing to restore.
        let fake = Fake {
            fail: true,
            ..Fake::default()
        };
        assert!(RawGuard::enable(fake.clone()).is_err());
        assert_eq!(fake.disabled.load(Ordering::SeqCst), 0);

        // Hooks cannot be uninstalled; leave a printing one behind.
        let _ = std::panic::take_hook();
        std::panic::set_hook(default_hook);
    }
}
