//! What an applied operation answers: one variant per reply type of
//! pb-proto, kept typed until a transport serialises it at its edge. The
//! IPC transport writes it as the frame's `result`; HTTP takes out the type
//! its route expects ([`Answer::into_reply`]) and builds its own response
//! from it, with no second parse of JSON.

use pb_proto::*;
use serde::Serialize;

/// Declares [`Answer`] with a `From` for each reply type, and the
/// [`ReplyType`] way back out.
macro_rules! answers {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// One applied operation's reply. Serialises as the reply type
        /// itself: the wire never sees the variant.
        #[derive(Debug, Serialize)]
        #[serde(untagged)]
        pub enum Answer {
            $($variant($ty),)*
            /// The request waits in a lock's queue: its real answer comes
            /// from the wait (`Outcome::pending`), so this one is never
            /// sent.
            Queued,
        }

        $(
            impl From<$ty> for Answer {
                fn from(reply: $ty) -> Answer {
                    Answer::$variant(reply)
                }
            }

            impl ReplyType for $ty {
                fn from_answer(answer: Answer) -> Option<Self> {
                    match answer {
                        Answer::$variant(reply) => Some(reply),
                        _ => None,
                    }
                }
            }
        )*

        impl Answer {
            /// The variant's name, for a mismatch's message.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Answer::$variant(_) => stringify!($ty),)*
                    Answer::Queued => "Queued",
                }
            }
        }
    };
}

/// A reply type a transport can ask an [`Answer`] for.
pub trait ReplyType: Sized {
    /// The reply, or `None` if the answer holds another type.
    fn from_answer(answer: Answer) -> Option<Self>;
}

answers! {
    Status(StatusReply),
    Metrics(MetricsReply),
    Lease(LeaseInfo),
    Claim(ClaimReply),
    ClaimMany(ClaimManyReply),
    Release(ReleaseReply),
    Find(FindReply),
    Who(WhoReply),
    Listeners(ListenersReply),
    Wait(WaitReply),
    LoginCode(LoginCodeReply),
    Login(LoginReply),
    Shutdown(ShutdownReply),
    Lock(LockReply),
    LockInfo(LockInfo),
    Locks(LocksReply),
    Unlock(UnlockReply),
    Publish(PublishReply),
    History(HistoryReply),
    Channels(ChannelsReply),
    Clear(ClearReply),
    Subscribe(SubscribeReply),
    Agent(AgentReply),
    AgentInfo(AgentInfo),
    Agents(AgentsReply),
    Unregister(UnregisterReply),
    Activity(ActivityReply),
    Follow(FollowReply),
    Webhook(WebhookInfo),
    Webhooks(WebhooksReply),
    WebhookCreated(WebhookCreated),
    WebhookDeleted(WebhookDeleted),
    WebhookTest(WebhookTestReply),
    Deliveries(DeliveriesReply),
    WebhookEvents(WebhookEventsReply),
    Stack(StackInfo),
    Stacks(StacksReply),
    StackRestart(StackRestartReply),
    StackLog(StackLogReply),
    Session(SessionReply),
    Sessions(SessionsReply),
    SessionEnd(SessionEndReply),
    Note(NoteReply),
    Notes(NotesReply),
    Files(FilesReply),
    FilesRelease(FilesReleaseReply),
    FilesWho(FilesWhoReply),
}

impl Answer {
    /// The reply as `T`. Another type is a bug in the route that asked (it
    /// named the wrong reply for its op), reported as such.
    pub fn into_reply<T: ReplyType>(self) -> Result<T, WireError> {
        let kind = self.kind();
        T::from_answer(self).ok_or_else(|| {
            WireError::new(
                ErrorCode::Internal,
                format!(
                    "unexpected reply: {kind} where {} was expected",
                    std::any::type_name::<T>()
                ),
            )
        })
    }

    /// The JSON text a frame carries, written straight from the typed
    /// reply.
    pub fn to_json(&self) -> Box<serde_json::value::RawValue> {
        serde_json::value::to_raw_value(self).expect("replies serialize")
    }
}
