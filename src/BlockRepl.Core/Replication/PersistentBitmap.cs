namespace BlockRepl.Core.Replication;

/// <summary>
/// What the owning link knows that decides what a bitmap page may drop on disk, read under the link's lock.
/// </summary>
/// <param name="MayClear">
/// Memory holds every range that may differ on the peer, so a bit clear in memory may clear on disk too (and the
/// chunks a resync took may be forgotten).
/// </param>
/// <param name="SafeSeq">Every record at or below this seq is durable on the peer or recorded in the bitmap.</param>
internal readonly record struct BitmapHorizon(bool MayClear, ulong SafeSeq);

/// <summary>
/// The dirty bitmap of a <see cref="PeerLink"/> and its copy in <c>NAME.meta</c>: the bits in memory, what was last
/// written to disk, and the rules for writing a page. The <see cref="ActivityLog"/> is bound to it and says when
/// pages are written (the bits of extents leaving the log); <see cref="PersistAll"/> writes everything that differs.
/// </summary>
/// <remarks>
/// <para>Locking (<see cref="LocksAndLimits"/>): the in-memory side (the bits, the on-disk copy, the chunks a resync
/// took, the extents evicted with records in flight) is guarded by the owning link's lock, passed in: the link calls
/// the bit methods (<see cref="Mark"/>, <see cref="TakeRun"/>, ...) while it holds that lock. Page writes are
/// serialized by this type's own <c>_persistGate</c>, taken before the link's lock; a page is composed under the
/// link's lock and written to the file outside it.</para>
/// <para>The invariant it keeps on disk: a range that may differ on the peer is set in memory, in a chunk a resync
/// took whose records are not safe yet, or in an extent evicted from the activity log with records in flight; a page
/// never clears on disk what any of those still holds.</para>
/// </remarks>
internal sealed class PersistentBitmap
{
    private const int WordsPerExtent = (int)(MetaFile.ExtentBytes >> DirtyBitmap.ChunkShift) / 64;
    private const int WordsPerPage = MetaFile.BitmapPageBytes / 8;

    private readonly Lock _linkGate;
    private readonly Func<BitmapHorizon> _horizonLocked;
    private readonly DirtyBitmap _bits;
    private readonly Lock _persistGate = new();
    private MetaFile? _meta;
    private ulong[]? _onDisk;

    // Extents evicted from the activity log while records in them were still on their way: their bits stay set on
    // disk until the safe seq passes the extent's last seq. Guarded by the link's lock.
    private readonly Dictionary<uint, ulong> _forced = [];

    // Chunks a resync took (cleared in memory) whose records are not durable on the peer yet: written set with
    // every page until the resync's records are safe, so a taken bit is never only in memory. Guarded by the link's lock.
    private DirtyBitmap? _taken;

    // A bitmap write or sync failed: _onDisk may be ahead of the disk, so every page is written until PersistAll works.
    private bool _onDiskUnknown;

    /// <param name="sizeBytes">The volume's size.</param>
    /// <param name="linkGate">The owning link's lock, which guards the in-memory side.</param>
    /// <param name="horizonLocked">The link's <see cref="BitmapHorizon"/>, called under <paramref name="linkGate"/>.</param>
    public PersistentBitmap(long sizeBytes, Lock linkGate, Func<BitmapHorizon> horizonLocked)
    {
        _bits = new DirtyBitmap(sizeBytes);
        _linkGate = linkGate;
        _horizonLocked = horizonLocked;
    }

    /// <summary>
    /// Makes the bitmap persistent in <paramref name="meta"/>: loads the bits saved there (ORed into memory) and
    /// binds the activity log, which decides when pages are written. Called once, before the first write.
    /// </summary>
    /// <param name="safeSeq">The link's safe seq, which the activity log reads to choose extents that may leave it.</param>
    public void Attach(MetaFile meta, ActivityLog? al, Func<ulong> safeSeq)
    {
        lock (_linkGate)
        {
            _meta = meta;
            _onDisk = new ulong[_bits.Words.Length];
            meta.ReadBitmap(_onDisk);
            _bits.Or(_onDisk);
        }

        al?.Bind(safeSeq, PersistExtents, () => Volatile.Write(ref _onDiskUnknown, true));
    }

    // ---- the bits in memory: called under the link's lock ---------------------------------------------------

    public bool IsEmpty => _bits.IsEmpty;

    public long DirtyBytes => _bits.DirtyBytes;

    public bool IsSet(long chunk) => _bits.IsSet(chunk);

    public void Mark(long offset, long length) => _bits.Mark(offset, length);

    public void MarkAll() => _bits.MarkAll();

    public void MarkRuns(IReadOnlyList<ulong> runs) => _bits.MarkRuns(runs);

    public List<ulong> EncodeRuns(int maxPairs) => _bits.EncodeRuns(maxPairs);

    public void Clear() => _bits.Clear();

    /// <summary>
    /// Takes a dirty run (<see cref="DirtyBitmap.TakeRun"/>): its bits clear in memory and stay set on disk as taken
    /// until the link's horizon says its records are safe (or a probe settles).
    /// </summary>
    public bool TakeRun(long fromOffset, int maxBytes, out long offset, out int length)
    {
        if (!_bits.TakeRun(fromOffset, maxBytes, out offset, out length))
        {
            return false;
        }

        if (_onDisk is not null)
        {
            _taken ??= new DirtyBitmap((long)_onDisk.Length * 64 * DirtyBitmap.ChunkSize);
            _taken.Mark(offset, length);
        }

        return true;
    }

    // ---- pages on disk ----------------------------------------------------------------------------------------

    /// <summary>
    /// Writes the bitmap pages holding <paramref name="extents"/>' bits (not synced: the caller syncs). An extent with
    /// an UntilSeq above 0 had records in flight: its bits are written all set and kept set until they are safe.
    /// </summary>
    public void PersistExtents(IReadOnlyList<(uint Extent, ulong UntilSeq)> extents)
    {
        lock (_linkGate)
        {
            foreach (var (extent, until) in extents)
            {
                if (until > 0)
                {
                    _forced[extent] = Math.Max(until, _forced.GetValueOrDefault(extent));
                }
            }
        }

        var pages = extents.Select(e => (long)e.Extent * WordsPerExtent / WordsPerPage).Distinct().Order();
        PersistPages(pages);
    }

    /// <summary>Writes every bitmap page that differs from what is on disk, then syncs.</summary>
    public void PersistAll()
    {
        if (_meta is null)
        {
            return;
        }

        try
        {
            PersistPages(Enumerable.Range(0, (_bits.Words.Length + WordsPerPage - 1) / WordsPerPage).Select(p => (long)p));
            _meta.Sync();
        }
        catch (IOException)
        {
            Volatile.Write(ref _onDiskUnknown, true);
            throw;
        }

        Volatile.Write(ref _onDiskUnknown, false);
    }

    private void PersistPages(IEnumerable<long> pages)
    {
        if (_meta is null || _onDisk is null)
        {
            return;
        }

        var page = new ulong[WordsPerPage];
        lock (_persistGate)
        {
            foreach (var p in pages)
            {
                var first = (int)(p * WordsPerPage);
                var count = Math.Min(WordsPerPage, _bits.Words.Length - first);
                if (count <= 0)
                {
                    continue;
                }

                bool changed;
                lock (_linkGate)
                {
                    var horizon = _horizonLocked();
                    if (horizon.MayClear)
                    {
                        _taken?.Clear();
                    }

                    changed = false;
                    for (var i = 0; i < count; i++)
                    {
                        var value = _bits.Words[first + i] | (horizon.MayClear ? 0 : _onDisk[first + i]) | (_taken?.Words[first + i] ?? 0);
                        page[i] = value;
                    }

                    if (_forced.Count > 0)
                    {
                        // Extents evicted with records in flight: all set until the safe seq passes them.
                        var safe = horizon.SafeSeq;
                        var firstExtent = (uint)(first / WordsPerExtent);
                        for (var e = firstExtent; e < firstExtent + (uint)((count + WordsPerExtent - 1) / WordsPerExtent); e++)
                        {
                            if (!_forced.TryGetValue(e, out var until))
                            {
                                continue;
                            }

                            if (until <= safe)
                            {
                                _forced.Remove(e);
                                continue;
                            }

                            var at = (int)(e - firstExtent) * WordsPerExtent;
                            for (var w = at; w < at + WordsPerExtent && w < count; w++)
                            {
                                page[w] = ulong.MaxValue;
                            }
                        }
                    }

                    changed = Volatile.Read(ref _onDiskUnknown) || !page.AsSpan(0, count).SequenceEqual(_onDisk.AsSpan(first, count));
                }

                if (changed)
                {
                    _meta.WriteBitmap(page.AsSpan(0, count), first);
                    lock (_linkGate)
                    {
                        page.AsSpan(0, count).CopyTo(_onDisk.AsSpan(first)); // only once written (and serialized by _persistGate)
                    }
                }
            }
        }
    }
}
