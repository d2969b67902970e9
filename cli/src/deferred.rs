//! A subcommand whose arguments clap builds only when it is the one run
//! (or when help, completions or the man page need the whole tree): most
//! runs of `pb` are one short command (`pb claim -q`, the broker's `pb
//! daemon`), and building every subcommand's arguments first was a part of
//! each start (BENCHMARKS.md, `pb claim -q`).

use std::cell::Cell;

use clap::{ArgMatches, Args, Command, CommandFactory, FromArgMatches, Subcommand};

/// `T`'s arguments (or its own subcommands), added by `Command::defer`.
pub struct Deferred<T>(pub T);

impl<T: FromArgMatches> FromArgMatches for Deferred<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Deferred)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
}

impl<T: Args> Args for Deferred<T> {
    fn augment_args(cmd: Command) -> Command {
        deferred_unless_whole(cmd, T::augment_args)
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        deferred_unless_whole(cmd, T::augment_args_for_update)
    }

    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }
}

impl<T: Subcommand> Subcommand for Deferred<T> {
    fn augment_subcommands(cmd: Command) -> Command {
        deferred_unless_whole(cmd, T::augment_subcommands)
    }

    fn augment_subcommands_for_update(cmd: Command) -> Command {
        deferred_unless_whole(cmd, T::augment_subcommands_for_update)
    }

    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

thread_local! {
    /// Set while `full_tree` builds: every part is built at once.
    static EAGER: Cell<bool> = const { Cell::new(false) };
}

/// The whole tree, nothing deferred, for what describes all of it
/// (completions, the man page, clap's own checks): exactly the tree
/// without `Deferred`, which clap's generators walk as they always did.
pub fn full_tree<C: CommandFactory>() -> Command {
    EAGER.with(|e| e.set(true));
    let cmd = C::command();
    EAGER.with(|e| e.set(false));
    cmd
}

/// `add` run on `cmd` when its subcommand is built (or now, in
/// `full_tree`).
fn deferred_unless_whole(cmd: Command, add: fn(Command) -> Command) -> Command {
    if EAGER.with(Cell::get) {
        add(cmd)
    } else {
        cmd.defer(add)
    }
}
