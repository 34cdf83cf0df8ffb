namespace BlockRepl.Core.Replication;

/// <summary>
/// The activity log: the set of 4 MiB extents that may hold writes the peer does not have durably, persisted in
/// <c>NAME.meta</c> before a write lands in an extent that was not in it. After a crash of the primary, the extents
/// it names plus the persisted bitmap are exactly what the next resync must send (DRBD's AL).
/// </summary>
/// <remarks>
/// <para>A write first <see cref="TryAcquire"/>s (fast path: every extent it touches is already logged: a counter
/// under a lock, no I/O) or <see cref="AcquireAsync"/>s its extents, then, after its record got a sequence number,
/// <see cref="Release"/>s them with that number. An extent may leave the log only when no write holds it and every
/// record in it is durable on the peer or recorded in the in-memory bitmap (its last seq &lt;= the link's
/// <see cref="PeerLink.SafeSeq"/>); its bitmap page is then written and made durable before the log that drops it.
/// So at every instant, a range that may differ on the peer is in a logged extent or set in the on-disk bitmap.</para>
/// <para>Transactions are group commits: whoever finds extents waiting writes one log slot for all of them (and one
/// bitmap flush for all the extents it evicts); least recently used extents are evicted first. A full log whose
/// extents all still hold unacknowledged records makes new extents wait for the peer's acks, which bounds how far an
/// async peer can lag to the logged area, as in DRBD.</para>
/// </remarks>
internal sealed class ActivityLog
{
    private readonly Lock _gate = new();
    private readonly Slot[] _slots;
    private readonly int _capacity;
    private readonly MetaFile _meta;
    private readonly List<Waiter> _waiters = [];
    private int _hot;
    private long _clock;
    private bool _committing;
    private volatile bool _hasWaiters;
    private long _transactions;
    private long _evictions;
    private Func<ulong> _safeSeq = () => ulong.MaxValue;
    private Action<IReadOnlyList<(uint Extent, ulong UntilSeq)>> _persistBitmap = _ => { };

    private struct Slot
    {
        public int Refs;
        public bool Hot;
        public ulong LastSeq;
        public long LastUse;
    }

    private sealed record Waiter(uint First, uint Last, TaskCompletionSource Done);

    public ActivityLog(long sizeBytes, int capacity, MetaFile meta, IEnumerable<uint> logged)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, MinCapacity);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(capacity, MetaFile.MaxAlExtents);
        _capacity = capacity;
        _meta = meta;
        _slots = new Slot[(sizeBytes + MetaFile.ExtentBytes - 1) >> MetaFile.ExtentShift];
        foreach (var extent in logged)
        {
            if (extent < _slots.Length && !_slots[extent].Hot && _hot < capacity)
            {
                _slots[extent].Hot = true;
                _hot++;
            }
        }
    }

    /// <summary>The smallest log: enough for the largest single request Volume lets through (see <see cref="MaxRequestExtents"/>).</summary>
    public const int MinCapacity = VolumeOptions.MinActivityLogExtents;

    /// <summary>Volume splits trims and zero ranges so one request never holds more extents than this.</summary>
    public const int MaxRequestExtents = LocksAndLimits.ActivityLogMaxRequestExtents;

    public int Capacity => _capacity;

    /// <summary>Connects the log to the link: its safe seq and its bitmap flush (set once, before the first write).</summary>
    /// <param name="safeSeq">The link's safe seq (records at or below it are durable on the peer or in the bitmap).</param>
    /// <param name="persistBitmap">
    /// Writes the bitmap pages of evicted extents (not synced). An extent evicted with records above the safe seq
    /// comes with that extent's last seq: its bits must be written all set, and stay set on disk until the safe
    /// seq passes it (the records still on their way are covered by the bitmap instead of the log).
    /// </param>
    /// <param name="persistFailed">A bitmap write or sync failed: what the caller believes is on disk may not be.</param>
    public void Bind(Func<ulong> safeSeq, Action<IReadOnlyList<(uint Extent, ulong UntilSeq)>> persistBitmap, Action? persistFailed = null)
    {
        _safeSeq = safeSeq;
        _persistBitmap = persistBitmap;
        _persistFailed = persistFailed ?? (() => { });
    }

    private Action _persistFailed = () => { };

    public (int Hot, long Transactions, long Evictions) Stats
    {
        get
        {
            lock (_gate)
            {
                return (_hot, _transactions, _evictions);
            }
        }
    }

    /// <summary>Fast path: when every extent of the range is logged, holds them and returns true.</summary>
    public bool TryAcquire(long offset, long length)
    {
        var (first, last) = Span(offset, length);
        lock (_gate)
        {
            for (var e = first; e <= last; e++)
            {
                if (!_slots[e].Hot)
                {
                    return false;
                }
            }

            var now = ++_clock;
            for (var e = first; e <= last; e++)
            {
                _slots[e].Refs++;
                _slots[e].LastUse = now;
            }

            return true;
        }
    }

    /// <summary>
    /// Holds the range's extents, completing once every one of them is in the durable log and held. A request that
    /// waits holds nothing meanwhile (so waiting requests can never pin the log full); it is admitted whole, in
    /// arrival order, and its extents are held in the same step that finds them all logged.
    /// </summary>
    public Task AcquireAsync(long offset, long length)
    {
        var (first, last) = Span(offset, length);
        Task wait;
        lock (_gate)
        {
            if (AllHotLocked(first, last))
            {
                HoldLocked(first, last);
                return Task.CompletedTask;
            }

            var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Add(new Waiter(first, last, tcs));
            _hasWaiters = true;
            wait = tcs.Task;
        }

        Commit();
        return wait;
    }

    private bool AllHotLocked(uint first, uint last)
    {
        for (var e = first; e <= last; e++)
        {
            if (!_slots[e].Hot)
            {
                return false;
            }
        }

        return true;
    }

    private void HoldLocked(uint first, uint last)
    {
        var now = ++_clock;
        for (var e = first; e <= last; e++)
        {
            _slots[e].Refs++;
            _slots[e].LastUse = now;
        }
    }

    /// <summary>The write is done locally; its last record in the range got <paramref name="seq"/> (0: no record).</summary>
    public void Release(long offset, long length, ulong seq)
    {
        var (first, last) = Span(offset, length);
        lock (_gate)
        {
            for (var e = first; e <= last; e++)
            {
                _slots[e].Refs--;
                if (seq > _slots[e].LastSeq)
                {
                    _slots[e].LastSeq = seq;
                }
            }
        }

        if (_hasWaiters)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static log => log.Commit(), this, preferLocal: false);
        }
    }

    /// <summary>The link's safe seq moved (acks, or a stream closed): waiting extents may find room now.</summary>
    public void NotifyProgress()
    {
        if (_hasWaiters)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static log => log.Commit(), this, preferLocal: false);
        }
    }

    /// <summary>Empties the log (a clean stop, after the whole bitmap was persisted). Durable when it returns.</summary>
    public void Clear()
    {
        lock (_gate)
        {
            for (var e = 0; e < _slots.Length; e++)
            {
                if (_slots[e].Refs == 0)
                {
                    _slots[e].Hot = false;
                }
            }

            _hot = _slots.Count(s => s.Hot);
            _meta.WriteActivityLog(HotLocked());
        }

        _meta.Sync();
    }

    /// <summary>
    /// Writes one transaction for the extents waiting, evicting the least recently used idle ones when the log
    /// is full. Runs on whichever thread finds work; one at a time.
    /// </summary>
    private void Commit()
    {
        while (true)
        {
            List<uint> admitted;
            List<(uint Extent, ulong UntilSeq)> victims;
            uint[] image;
            lock (_gate)
            {
                if (_committing || _waiters.Count == 0)
                {
                    return;
                }

                // Admit whole requests in arrival order while the log can make room for them: free slots plus
                // logged extents no write holds (those outside the admitted requests' own ranges).
                var admittedSet = new HashSet<uint>();
                var protectedSet = new HashSet<uint>();
                var free = _capacity - _hot;
                var evictable = 0;
                for (var e = 0; e < _slots.Length; e++)
                {
                    if (_slots[e].Hot && _slots[e].Refs == 0)
                    {
                        evictable++;
                    }
                }

                foreach (var w in _waiters)
                {
                    var missing = new List<uint>();
                    var ownHotIdle = 0;
                    for (var e = w.First; e <= w.Last; e++)
                    {
                        if (!_slots[e].Hot)
                        {
                            if (!admittedSet.Contains(e))
                            {
                                missing.Add(e);
                            }
                        }
                        else if (_slots[e].Refs == 0 && !protectedSet.Contains(e))
                        {
                            ownHotIdle++; // logged and idle, but this request needs it: not a victim
                        }
                    }

                    if (admittedSet.Count + missing.Count > free + evictable - ownHotIdle)
                    {
                        break; // first in, first served: later requests wait behind this one
                    }

                    evictable -= ownHotIdle;
                    for (var e = w.First; e <= w.Last; e++)
                    {
                        protectedSet.Add(e);
                    }

                    admittedSet.UnionWith(missing);
                }

                if (admittedSet.Count == 0)
                {
                    return; // the log is held full by writes in progress: the next release retries
                }

                admitted = [.. admittedSet];
                victims = admitted.Count > free ? ChooseVictimsLocked(admitted.Count - free, protectedSet) : [];
                foreach (var (v, _) in victims)
                {
                    _slots[v].Hot = false; // no new write may enter it until it is logged again
                    _hot--;
                }

                image = [.. HotLocked(), .. admitted];
                _committing = true;
            }

            try
            {
                if (victims.Count > 0)
                {
                    // The evicted extents' dirty bits must be on disk before the log stops naming them.
                    _persistBitmap(victims);
                    _meta.Sync();
                }

                _meta.WriteActivityLog(image);
                _meta.Sync();
            }
            catch (Exception ex)
            {
                _persistFailed();
                lock (_gate)
                {
                    // The durable log may still name the victims, or not (a torn slot falls back to the previous
                    // one): keep treating them as logged, so their bits are persisted again before they go.
                    foreach (var (v, _) in victims)
                    {
                        _slots[v].Hot = true;
                        _hot++;
                    }

                    _committing = false;
                    FailWaitersLocked(ex);
                }

                return;
            }

            lock (_gate)
            {
                _transactions++;
                _evictions += victims.Count;
                foreach (var e in admitted)
                {
                    _slots[e].Hot = true;
                    _hot++;
                }

                _committing = false;
                ReleaseWaitersLocked();
            }
        }
    }

    /// <summary>
    /// Idle extents (no write holding them), those whose records are all safe first, then least recently used.
    /// An extent with records still on their way is evicted too when it must be, with its last seq: its bits go
    /// to disk all set (<see cref="Bind"/>), so a full log never waits for a slow peer's acks.
    /// </summary>
    private List<(uint Extent, ulong UntilSeq)> ChooseVictimsLocked(int wanted, HashSet<uint> keep)
    {
        var safe = _safeSeq();
        var candidates = new List<(bool Unsafe, long LastUse, uint Extent, ulong LastSeq)>();
        for (var e = 0; e < _slots.Length; e++)
        {
            ref var s = ref _slots[e];
            if (s.Hot && s.Refs == 0 && !keep.Contains((uint)e))
            {
                candidates.Add((s.LastSeq > safe, s.LastUse, (uint)e, s.LastSeq));
            }
        }

        candidates.Sort();
        return [.. candidates.Take(wanted).Select(c => (c.Extent, c.Unsafe ? c.LastSeq : 0UL))];
    }

    private void ReleaseWaitersLocked()
    {
        for (var i = 0; i < _waiters.Count;)
        {
            var w = _waiters[i];
            if (AllHotLocked(w.First, w.Last))
            {
                HoldLocked(w.First, w.Last); // held in the step that finds them logged: no eviction in between
                _waiters.RemoveAt(i);
                w.Done.TrySetResult();
            }
            else
            {
                i++;
            }
        }

        _hasWaiters = _waiters.Count > 0;
    }

    private void FailWaitersLocked(Exception ex)
    {
        var error = new BlockImageException($"activity log update in {_meta.Path} failed: {ex.Message}", Native.LibC.EIO, ex);
        foreach (var w in _waiters)
        {
            w.Done.TrySetException(error);
        }

        _waiters.Clear();
        _hasWaiters = false;
    }

    private uint[] HotLocked()
    {
        var hot = new uint[_hot];
        var n = 0;
        for (var e = 0; e < _slots.Length && n < hot.Length; e++)
        {
            if (_slots[e].Hot)
            {
                hot[n++] = (uint)e;
            }
        }

        return hot;
    }

    private (uint First, uint Last) Span(long offset, long length)
    {
        var first = (uint)(offset >> MetaFile.ExtentShift);
        var last = (uint)((offset + Math.Max(1, length) - 1) >> MetaFile.ExtentShift);
        return (first, Math.Min(last, (uint)_slots.Length - 1));
    }
}
