using System.Numerics;

namespace BlockRepl.Core.Replication;

/// <summary>
/// What may differ between this node's image and its peer's: one bit per <see cref="ChunkSize"/> bytes.
/// </summary>
/// <remarks>
/// 4 KiB per bit, as DRBD: a 4 KiB random write dirties exactly one chunk, so a resync after a short outage
/// sends what was written and nothing more; the cost is 32 KiB of memory per GiB of volume, and the same on disk
/// in <c>NAME.meta</c>, where one 4 KiB page covers 128 MiB of volume (32 activity-log extents), so flushing the
/// bits of an extent leaving the activity log is a single page write. Not thread-safe: <see cref="PersistentBitmap"/>
/// holds it and persists it (<see cref="ActivityLog"/> says when), under its <see cref="PeerLink"/>'s lock.
/// </remarks>
public sealed class DirtyBitmap
{
    public const int ChunkShift = 12;
    public const int ChunkSize = 1 << ChunkShift;

    private readonly ulong[] _words;
    private readonly long _chunks;
    private readonly long _sizeBytes;
    private long _dirty;

    public DirtyBitmap(long sizeBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(sizeBytes);
        _sizeBytes = sizeBytes;
        _chunks = (sizeBytes + ChunkSize - 1) >> ChunkShift;
        _words = new ulong[(_chunks + 63) >> 6];
    }

    public long DirtyChunks => _dirty;

    /// <summary>Bytes the dirty chunks cover (the last chunk counted only up to the volume's end).</summary>
    public long DirtyBytes
    {
        get
        {
            if (_dirty == 0)
            {
                return 0;
            }

            var bytes = _dirty << ChunkShift;
            var tail = _sizeBytes & (ChunkSize - 1);
            if (tail != 0 && IsSet(_chunks - 1))
            {
                bytes -= ChunkSize - tail;
            }

            return bytes;
        }
    }

    public bool IsEmpty => _dirty == 0;

    /// <summary>Marks every chunk that <c>[offset, offset+length)</c> touches.</summary>
    public void Mark(long offset, long length)
    {
        if (length <= 0 || offset >= _sizeBytes)
        {
            return;
        }

        var end = Math.Min(_sizeBytes, offset + length);
        var first = offset >> ChunkShift;
        var last = (end - 1) >> ChunkShift;
        for (var chunk = first; chunk <= last; chunk++)
        {
            ref var word = ref _words[chunk >> 6];
            var bit = 1UL << (int)(chunk & 63);
            if ((word & bit) == 0)
            {
                word |= bit;
                _dirty++;
            }
        }
    }

    /// <summary>The words, 64 chunks each (for persistence).</summary>
    internal ulong[] Words => _words;

    /// <summary>Sets every bit set in <paramref name="words"/> (a persisted or received bitmap).</summary>
    public void Or(ReadOnlySpan<ulong> words)
    {
        var n = Math.Min(words.Length, _words.Length);
        for (var i = 0; i < n; i++)
        {
            _words[i] |= words[i];
        }

        var spare = (int)((_words.Length << 6) - _chunks);
        if (spare > 0)
        {
            _words[^1] &= ulong.MaxValue >> spare;
        }

        _dirty = 0;
        foreach (var w in _words)
        {
            _dirty += BitOperations.PopCount(w);
        }
    }

    /// <summary>
    /// The dirty runs as (first chunk, chunk count) pairs, at most <paramref name="maxPairs"/>: when there are
    /// more, runs are widened to coarser units (a superset, never fewer bits).
    /// </summary>
    public List<ulong> EncodeRuns(int maxPairs)
    {
        for (long unit = 1; ; unit *= 8)
        {
            var runs = new List<ulong>();
            var fits = true;
            long chunk;
            long from = 0;
            while ((chunk = FindSet(from)) >= 0)
            {
                var start = chunk / unit;
                var end = start + 1;
                while (end * unit < _chunks)
                {
                    var p = end * unit;
                    if (IsSet(p))
                    {
                        end = (FindClear(p) + unit - 1) / unit;
                        continue;
                    }

                    var set = FindSet(p);
                    if (set >= 0 && set < p + unit)
                    {
                        end++;
                        continue;
                    }

                    break;
                }

                if (runs.Count / 2 >= maxPairs)
                {
                    fits = false;
                    break;
                }

                var first = start * unit;
                var last = Math.Min(_chunks, end * unit);
                runs.Add((ulong)first);
                runs.Add((ulong)(last - first));
                from = last;
                if (from >= _chunks)
                {
                    break;
                }
            }

            if (fits)
            {
                return runs;
            }
        }
    }

    /// <summary>Marks runs produced by <see cref="EncodeRuns"/> (bounds checked: a run past the end is clipped).</summary>
    public void MarkRuns(IReadOnlyList<ulong> runs)
    {
        for (var i = 0; i + 1 < runs.Count; i += 2)
        {
            var first = runs[i];
            var count = runs[i + 1];
            if (first >= (ulong)_chunks || count == 0)
            {
                continue;
            }

            var end = Math.Min((ulong)_chunks, first + Math.Min(count, (ulong)_chunks));
            Mark((long)first << ChunkShift, (long)(end - first) << ChunkShift);
        }
    }

    public void MarkAll()
    {
        Array.Fill(_words, ulong.MaxValue);
        var spare = (int)((_words.Length << 6) - _chunks);
        if (spare > 0)
        {
            _words[^1] = ulong.MaxValue >> spare;
        }

        _dirty = _chunks;
    }

    public void Clear()
    {
        Array.Clear(_words);
        _dirty = 0;
    }

    public bool IsSet(long chunk) => (_words[chunk >> 6] & (1UL << (int)(chunk & 63))) != 0;

    /// <summary>
    /// Finds the first dirty chunk at or after <paramref name="fromOffset"/> (wrapping to the start once), takes
    /// the run of dirty chunks that follows it, at most <paramref name="maxBytes"/>, clears those bits and
    /// returns the byte range they cover. False when the bitmap is clean.
    /// </summary>
    public bool TakeRun(long fromOffset, int maxBytes, out long offset, out int length)
    {
        offset = 0;
        length = 0;
        if (_dirty == 0)
        {
            return false;
        }

        var start = FindSet(Math.Clamp(fromOffset >> ChunkShift, 0, _chunks));
        if (start < 0)
        {
            start = FindSet(0);
        }

        if (start < 0)
        {
            return false;
        }

        var maxChunks = Math.Max(1, maxBytes >> ChunkShift);
        var chunk = start;
        while (chunk < _chunks && chunk - start < maxChunks && IsSet(chunk))
        {
            _words[chunk >> 6] &= ~(1UL << (int)(chunk & 63));
            _dirty--;
            chunk++;
        }

        offset = start << ChunkShift;
        length = (int)(Math.Min(_sizeBytes, chunk << ChunkShift) - offset);
        return true;
    }

    /// <summary>The first clean chunk at or after <paramref name="fromChunk"/>, or the chunk count.</summary>
    private long FindClear(long fromChunk)
    {
        var chunk = fromChunk;
        while (chunk < _chunks)
        {
            var index = (int)(chunk >> 6);
            var word = ~_words[index] & (ulong.MaxValue << (int)(chunk & 63));
            if (word != 0)
            {
                return Math.Min(_chunks, ((long)index << 6) + BitOperations.TrailingZeroCount(word));
            }

            chunk = (long)(index + 1) << 6;
        }

        return _chunks;
    }

    private long FindSet(long fromChunk)
    {
        if (fromChunk >= _chunks)
        {
            return -1;
        }

        var index = (int)(fromChunk >> 6);
        var word = _words[index] & (ulong.MaxValue << (int)(fromChunk & 63));
        while (true)
        {
            if (word != 0)
            {
                var chunk = ((long)index << 6) + BitOperations.TrailingZeroCount(word);
                return chunk < _chunks ? chunk : -1;
            }

            if (++index >= _words.Length)
            {
                return -1;
            }

            word = _words[index];
        }
    }
}
