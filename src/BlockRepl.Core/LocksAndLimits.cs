namespace BlockRepl.Core;

/// <summary>
/// The engine's lock order and every backpressure threshold, stated once. Code refers to these names; a comment
/// elsewhere names the constant, never repeats its value.
/// </summary>
/// <remarks>
/// <para><b>Lock order.</b> A thread holding a lock of this table takes only locks further down it, never one
/// above. No lock is held across an <c>await</c>. Every lock is a <see cref="Lock"/> field of the type named.</para>
/// <code>
/// #  lock                          guards                                         takes, nested inside it
/// -- ----------------------------- ---------------------------------------------- -----------------------------------
/// 1  Volume._order (ordering lock) seq order = local write order; role flips;     2, 5, 7 (a write: seq, record, pwrite;
///                                  diskless state; reads for probes and resync    a resync run: take, read, submit)
/// 2  Volume._metaGate              VolumeMetadata and its saves                   4, 5, 7 (EndSyncTarget persists the
///                                                                                 cleared bitmap)
/// 3  ActivityLog._gate             extents: hot, held, waiters                    5 (SafeSeq when choosing victims), 7
/// 4  PersistentBitmap._persistGate bitmap page writes, one writer at a time       5, 7
/// 5  PeerLink._gate                the link: state, queue, seqs, acks, waiters,   7 (Attach reads the bitmap)
///                                  probes, peer reads; and the PersistentBitmap's
///                                  in-memory side (bits, on-disk copy, taken,
///                                  forced), which it is handed at construction
/// 6  CoalescingFlush._gate         flush rounds                                   none
/// 7  MetaFile._gate                the NAME.meta slots                            none
/// 8  WriteWaiterPool._gate         the free list of write waiters                 none
/// </code>
/// <para>Locks 1 and 2 stay fields of <see cref="Volume"/>; the engine objects that work on the volume's state take them
/// through its internal surface (<c>Volume.OrderLock</c>, <c>Volume.MetaGate</c>) and have no lock of their own:
/// <c>ReplicationSource</c> (handshake, stream open and close, a resync run: take, read, submit),
/// <c>ReplicaTarget</c> (apply a record under 1; metadata under 2) and <c>DisklessState</c> (detach, attach under 1).</para>
/// <para>Callbacks out of a lock: the activity log's <c>NotifyProgress</c> and <c>Commit</c> run after the link's
/// lock is released (thread pool), and waiters' continuations run asynchronously (on the thread pool), so no
/// continuation runs under a lock, and none on the ack loop's thread: a front end's reply can block on a slow client.
/// <see cref="ChangeSignal.Pulse"/> takes no lock, so it may be called under any of them; its waiters resume on the
/// thread pool too.</para>
/// <para><b>Backpressure thresholds.</b> The send queue bound B is <c>serve --send-queue</c> (at least
/// <see cref="MinSendQueueBytes"/>).</para>
/// <code>
/// threshold                          value          what happens at it
/// ---------------------------------- -------------- ---------------------------------------------------------------
/// MaxRecordPayload                   1 MiB          a larger write goes out as several records
/// MinRecordCost                      4 KiB          what a record counts against B at least (trims, zeroes, flushes)
/// B, sync                            configured     a writer waits while queued + its bytes &gt; B (and queued &gt; 0)
/// SyncWritersResume(B)               B / 2          waiting sync writers enter again once queued &lt;= this
/// B, async                           configured     queued + in flight + cost &gt; B: the link goes ahead
/// LeaveAheadInFlight(B)              B / 4          ahead ends when nothing is queued and in flight &lt;= this
/// ResyncFillCap(B)                   B / 2          a resync's fill target is never above this
/// ResyncIdleRunBytes / FillBytes     1 / 16 MiB     resync run and fill target while the application is idle
/// ResyncBusyRunBytes / FillBytes     64 / 64 KiB    ... while it writes (a write within ResyncBusyWindow)
/// ResyncMinBytesPerSecond            64 MiB/s       the busy resync's pace
/// SoftBatchBytes                     1 MiB          a sender stops adding records to a batch
/// MaxBatchBytes                      4 MiB          a receiver refuses a larger uncompressed batch
/// MaxMessageBytes                    5 MiB          gRPC message limit on the replication port
/// MaxPeerRead                        1 MiB          one read of a diskless primary through its peer
/// PeerReadTimeout                    30 s           such a read fails with EIO
/// MaxProbeBytes                      1 MiB          one checksum probe (verify, checksum resync)
/// MaxOutstandingProbes               8              probes in flight per verify or checksum pass
/// MaxDifferingChunks                 1 Mi chunks    a verify stops (a full resync is the repair)
/// MaxChecksumRequestBytes            4 MiB          a receiver refuses a larger checksum request
/// MaxQueuedChecksumReplies           64             a receiver's apply loop waits for its ack loop
/// MaxDirtyPairs                      128 Ki runs    dirty runs a receiver sends back in its handshake reply
/// ActivityLogMaxRequestExtents       16             a trim or zero range holds at most this many extents at once
/// MaxPooledWaiters                   4096           free write waiters kept per link (more are left to the GC)
/// MaxPooledLinkItems                 4096           free queue entries kept per link
/// WatchMinInterval                   250 ms         a status watch's default least time between two replies
/// WatchMaxInterval                   1 s            ... and most time (its periodic refresh, the only timer)
/// WatchIntervalFloor / Ceiling       50 ms / 1 h    the intervals a watch asks for are kept within these
/// </code>
/// </remarks>
public static class LocksAndLimits
{
    /// <summary>Records larger than this are split, so a batch always fits a gRPC message.</summary>
    public const int MaxRecordPayload = 1 << 20;

    /// <summary>Free write waiters a link keeps for reuse (a sync write's acknowledgement allocates nothing).</summary>
    public const int MaxPooledWaiters = 4096;

    /// <summary>Free send-queue entries a link keeps for reuse.</summary>
    public const int MaxPooledLinkItems = 4096;

    /// <summary>What a record counts against the queue bound at least, so trims, zero ranges and flushes are bounded too.</summary>
    public const int MinRecordCost = 4096;

    /// <summary>The smallest send queue bound: two of the largest records.</summary>
    public const long MinSendQueueBytes = 2L * MaxRecordPayload;

    /// <summary>Sync writers waiting for room in the queue enter again once at most this much is queued.</summary>
    public static long SyncWritersResume(long queueBound) => queueBound / 2;

    /// <summary>An async link that ran ahead leaves that state when nothing is queued and at most this much is in flight.</summary>
    public static long LeaveAheadInFlight(long queueBound) => queueBound / 4;

    /// <summary>The most a resync keeps queued or in flight in front of the application's writes.</summary>
    public static long ResyncFillCap(long queueBound) => queueBound / 2;

    /// <summary>Resync run while the application is idle.</summary>
    public const int ResyncIdleRunBytes = 1 << 20;

    /// <summary>Resync fill target while the application is idle.</summary>
    public const long ResyncIdleFillBytes = 16L << 20;

    /// <summary>Resync run while the application writes.</summary>
    public const int ResyncBusyRunBytes = 64 << 10;

    /// <summary>Resync fill target while the application writes.</summary>
    public const long ResyncBusyFillBytes = 64 << 10;

    /// <summary>The rate a resync keeps while the application writes.</summary>
    public const long ResyncMinBytesPerSecond = 64L << 20;

    /// <summary>An application write this recent makes the resync yield.</summary>
    public static readonly TimeSpan ResyncBusyWindow = TimeSpan.FromMilliseconds(100);

    /// <summary>A sender stops adding records to a batch once it holds this much (group commit, bounded).</summary>
    public const int SoftBatchBytes = 1 << 20;

    /// <summary>
    /// Largest uncompressed batch a receiver accepts: <see cref="SoftBatchBytes"/> plus one record of at most
    /// <see cref="MaxRecordPayload"/> is well inside it.
    /// </summary>
    public const int MaxBatchBytes = 4 << 20;

    /// <summary>The gRPC message limit on the replication port (LZ4's bound of a <see cref="MaxBatchBytes"/> batch plus framing).</summary>
    public const int MaxMessageBytes = 5 << 20;

    /// <summary>The largest read one request through the peer carries (diskless).</summary>
    public const int MaxPeerRead = 1 << 20;

    /// <summary>A read through the peer that takes longer fails (EIO to the client).</summary>
    public static readonly TimeSpan PeerReadTimeout = TimeSpan.FromSeconds(30);

    /// <summary>Largest range one checksum probe covers (the peer rejects more); also the read buffer of a verify.</summary>
    public const int MaxProbeBytes = 1 << 20;

    /// <summary>Probes outstanding at once: bounds the peer's work queue and the hashes held here.</summary>
    public const int MaxOutstandingProbes = 8;

    /// <summary>Differing chunks a verify holds before it stops (8 MiB of offsets).</summary>
    public const int MaxDifferingChunks = 1 << 20;

    /// <summary>Largest range one checksum request may cover at the receiver (it reads it into one buffer).</summary>
    public const int MaxChecksumRequestBytes = 4 << 20;

    /// <summary>Checksum replies waiting for a receiver's ack loop before its apply loop waits too.</summary>
    public const int MaxQueuedChecksumReplies = 64;

    /// <summary>Dirty runs (offset, length pairs) a receiver sends back in its handshake reply.</summary>
    public const int MaxDirtyPairs = 128 * 1024;

    /// <summary>Volume splits trims and zero ranges so one request never holds more activity-log extents than this.</summary>
    public const int ActivityLogMaxRequestExtents = 16;

    /// <summary>A status watch (Admin/WatchStatus) that asks for no least interval waits this long between replies.</summary>
    public static readonly TimeSpan WatchMinInterval = TimeSpan.FromMilliseconds(250);

    /// <summary>A status watch that asks for no most interval sends a reply at least this often, changes or not.</summary>
    public static readonly TimeSpan WatchMaxInterval = TimeSpan.FromSeconds(1);

    /// <summary>A watch's least interval is raised to this: a client cannot make the daemon build replies in a loop.</summary>
    public static readonly TimeSpan WatchIntervalFloor = TimeSpan.FromMilliseconds(50);

    /// <summary>A watch's most interval is cut to this.</summary>
    public static readonly TimeSpan WatchIntervalCeiling = TimeSpan.FromHours(1);
}
