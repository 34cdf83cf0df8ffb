using System.Buffers;
using System.Security.Cryptography;
using BlockRepl.Core.Replication;

namespace BlockRepl.Core;

/// <summary>A byte range of the volume.</summary>
public readonly record struct VolumeRange(long Offset, long Length)
{
    public long End => Offset + Length;
}

/// <summary>The outcome of an online verify (and of its repair, when one was asked for).</summary>
public sealed record VerifyResult(
    bool Done,
    string Reason,
    DateTimeOffset StartedAt,
    DateTimeOffset FinishedAt,
    int ChunkBytes,
    long BytesCompared,
    long ChunksCompared,
    long DirtyChunksSkipped,
    IReadOnlyList<VolumeRange> Differing,
    bool Repair,
    IReadOnlyList<VolumeRange> Remaining)
{
    public bool Identical => Done && Differing.Count == 0;
}

/// <summary>
/// Online verify and the probing pass of checksum resync, for one <see cref="Volume"/> (which owns it): chunk hashes
/// of both images compared at one position of the stream.
/// </summary>
/// <remarks>
/// Why a verify has no false positives from writes in flight: the probe for a range is queued in the same
/// critical section (the ordering lock, which every write, trim and zero range holds while it takes its seq,
/// queues its record and changes the local image) in which this node reads the range. The peer applies every
/// frame in stream order and hashes when the probe arrives, after every earlier record and before any later one.
/// So both hashes describe the image after exactly the same prefix of writes. What can legitimately differ at that
/// point is what the bitmap marks dirty (writes dropped while ahead or while the peer was away, a local write that
/// failed): those chunks are reported as skipped, not as differences.
///
/// SHA-256 comes from the runtime (System.IO.Hashing is not served here) and runs on the SHA extensions of the
/// CPU; a cryptographic hash also means a chunk cannot be made to collide by the data a guest writes.
/// </remarks>
internal sealed class VolumeVerifier(Volume volume, Lock order, BlockImage image)
{
    private const int MaxProbeBytes = LocksAndLimits.MaxProbeBytes;

    private const int ChecksumResyncChunk = Volume.ChecksumResyncChunk;

    private const int MaxOutstandingProbes = LocksAndLimits.MaxOutstandingProbes;

    private static readonly TimeSpan RepairWait = TimeSpan.FromMinutes(10);

    /// <summary>
    /// Differing chunks a verify holds before it stops (<see cref="LocksAndLimits.MaxDifferingChunks"/>): past this the
    /// images are not "nearly identical" and a full resync is the repair, not a list of ranges.
    /// </summary>
    private const int MaxDifferingChunks = LocksAndLimits.MaxDifferingChunks;

    private int _verifyRunning;
    private volatile VerifyResult? _lastVerify;

    /// <summary>The last verify since the daemon started, or null.</summary>
    public VerifyResult? LastVerify => _lastVerify;

    /// <summary>
    /// Compares the hashes of every <paramref name="chunkBytes"/> chunk of this image with the peer's, while the
    /// volume is in use. With <paramref name="repair"/>, marks the differing chunks dirty, waits until the resync
    /// has sent them, and verifies them again (<see cref="VerifyResult.Remaining"/>).
    /// </summary>
    public async Task<VerifyResult> VerifyAsync(int chunkBytes, bool repair, Action<string> log, CancellationToken cancellationToken)
    {
        var started = DateTimeOffset.UtcNow;
        VerifyResult Refused(string reason) => new(false, reason, started, DateTimeOffset.UtcNow, chunkBytes, 0, 0, 0, [], repair, []);

        if (chunkBytes < DirtyBitmap.ChunkSize || chunkBytes > MaxProbeBytes || chunkBytes % DirtyBitmap.ChunkSize != 0)
        {
            return Refused($"chunk size {chunkBytes} is not a multiple of {DirtyBitmap.ChunkSize} between {DirtyBitmap.ChunkSize} and {MaxProbeBytes}");
        }

        if (Interlocked.CompareExchange(ref _verifyRunning, 1, 0) != 0)
        {
            return Refused("a verify of this volume is already running");
        }

        try
        {
            var link = volume.Link;
            var refusal = volume.Role != VolumeRole.Primary ? $"this node is {volume.Role.Name()}: run verify on the primary"
                : link is null ? "no peer is configured"
                : link.ResyncActive || link.HasDirty ? "a resync is due or running: verify once the peer is connected and in sync"
                : link.ProbeRefusal();
            if (refusal is not null)
            {
                return _lastVerify = Refused(refusal);
            }

            log($"verify of {volume.Size} bytes in {chunkBytes}-byte chunks started{(repair ? " (with repair)" : "")}");
            var pass = await CompareAsync(link!, [new VolumeRange(0, volume.Size)], chunkBytes, cancellationToken).ConfigureAwait(false);
            var result = new VerifyResult(pass.Error is null, pass.Error ?? "", started, DateTimeOffset.UtcNow, chunkBytes, pass.Bytes, pass.Chunks,
                pass.Skipped, pass.Differing, repair, pass.Differing);
            log(Describe(result, "verify"));
            if (repair && result.Done && result.Differing.Count > 0)
            {
                _lastVerify = result;
                result = await RepairAsync(link!, result, log, cancellationToken).ConfigureAwait(false);
            }

            return _lastVerify = result;
        }
        finally
        {
            Volatile.Write(ref _verifyRunning, 0);
        }
    }

    private async Task<VerifyResult> RepairAsync(PeerLink link, VerifyResult found, Action<string> log, CancellationToken cancellationToken)
    {
        lock (order)
        {
            foreach (var range in found.Differing)
            {
                link.MarkDirty(range.Offset, range.Length);
            }
        }

        // The marks go to disk before the resync sends anything: they are not in the activity log, so a crash
        // of this node before the resync ends would otherwise forget them. (A bit the resync takes stays set on
        // disk until its record is safe on the peer.)
        try
        {
            link.PersistAll();
        }
        catch (IOException ex)
        {
            volume.ReportError($"verify repair: could not write the bitmap ({ex.Message}); the ranges are resynced, but a crash before that ends forgets them");
        }

        var bytes = found.Differing.Sum(r => r.Length);
        log($"verify repair: {found.Differing.Count} ranges ({bytes} bytes) marked dirty; waiting for the resync to send them");

        // The marks make the resync loop begin a resync; it is over when no bit is dirty and its End marker has
        // gone out. A probe queued after that comes after every resync record in the stream.
        if (!await link.WaitUntilAsync(l => !l.HasDirty && !l.ResyncActive && l.ProbeRefusal() is null, RepairWait, cancellationToken).ConfigureAwait(false))
        {
            return found with { Done = false, Reason = $"the resync of the differing ranges did not finish within {RepairWait.TotalMinutes:0} minutes", FinishedAt = DateTimeOffset.UtcNow };
        }

        var again = await CompareAsync(link, found.Differing, found.ChunkBytes, cancellationToken).ConfigureAwait(false);
        var result = found with
        {
            Done = again.Error is null,
            Reason = again.Error is null ? "" : $"verify after the repair: {again.Error}",
            FinishedAt = DateTimeOffset.UtcNow,
            Remaining = again.Error is null ? again.Differing : found.Differing,
        };
        log(result.Done && result.Remaining.Count == 0
            ? $"verify repair: the {found.Differing.Count} ranges were resynced and now match"
            : $"verify repair: {(result.Done ? $"{result.Remaining.Count} ranges still differ" : result.Reason)}");
        return result;
    }

    private static string Describe(VerifyResult r, string what) =>
        !r.Done ? $"{what} stopped after {r.BytesCompared} bytes: {r.Reason}"
        : r.Differing.Count == 0 ? $"{what}: {r.BytesCompared} bytes in {r.ChunksCompared} chunks identical{(r.DirtyChunksSkipped > 0 ? $" ({r.DirtyChunksSkipped} dirty chunks skipped)" : "")}"
        : $"{what}: {r.Differing.Count} ranges differ ({r.Differing.Sum(d => d.Length)} bytes): "
            + string.Join(", ", r.Differing.Take(16).Select(d => $"{d.Offset}+{d.Length}")) + (r.Differing.Count > 16 ? ", ..." : "");

    private sealed record ComparePass(long Bytes, long Chunks, long Skipped, List<VolumeRange> Differing, string? Error);

    /// <summary>Probes every range in windows of up to <see cref="MaxProbeBytes"/>, at most a few outstanding.</summary>
    private async Task<ComparePass> CompareAsync(PeerLink link, IReadOnlyList<VolumeRange> ranges, int chunkBytes, CancellationToken cancellationToken)
    {
        var window = MaxProbeBytes / chunkBytes * chunkBytes;
        var buffer = ArrayPool<byte>.Shared.Rent(window);
        using var slots = new SemaphoreSlim(MaxOutstandingProbes);
        var gate = new Lock();
        var differingChunks = new List<long>();
        long bytes = 0, chunks = 0, skipped = 0;
        string? error = null;

        string? CurrentError()
        {
            lock (gate)
            {
                return error;
            }
        }

        async Task CompareOneAsync(ChecksumProbe probe)
        {
            try
            {
                var peer = await probe.PeerHashes.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
                var local = probe.LocalHashes!;
                lock (gate)
                {
                    for (var i = 0; i < probe.Chunks; i++)
                    {
                        if (probe.DirtyAtProbe![i])
                        {
                            skipped++;
                            continue;
                        }

                        chunks++;
                        var h = i * ChecksumProbe.HashBytes;
                        if (!local.AsSpan(h, ChecksumProbe.HashBytes).SequenceEqual(peer.AsSpan(h, ChecksumProbe.HashBytes)))
                        {
                            if (differingChunks.Count >= MaxDifferingChunks)
                            {
                                error ??= $"more than {MaxDifferingChunks} chunks differ; stopped (a full resync repairs this more cheaply)";
                                break;
                            }

                            differingChunks.Add(probe.Offset + ((long)i * probe.ChunkBytes));
                        }
                    }

                    bytes += probe.Length;
                }
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException)
            {
                lock (gate)
                {
                    error ??= ex.Message;
                }
            }
            finally
            {
                slots.Release();
            }
        }

        try
        {
            foreach (var range in ranges)
            {
                for (var pos = range.Offset; pos < range.End && CurrentError() is null;)
                {
                    await slots.WaitAsync(cancellationToken).ConfigureAwait(false);
                    var length = (int)Math.Min(window, range.End - pos);
                    var probe = new ChecksumProbe(pos, length, chunkBytes, resync: false);
                    string? refused = null;
                    lock (order)
                    {
                        if (volume.Role != VolumeRole.Primary)
                        {
                            refused = "this node stopped being primary";
                        }
                        else
                        {
                            image.Read(pos, buffer.AsSpan(0, length));
                            if (!link.TryQueueProbe(probe))
                            {
                                refused = link.ProbeRefusal() ?? "the link refused the checksum request";
                            }
                        }
                    }

                    if (refused is not null)
                    {
                        slots.Release();
                        lock (gate)
                        {
                            error ??= refused;
                        }

                        break;
                    }

                    probe.LocalHashes = HashChunks(buffer.AsSpan(0, length), chunkBytes);
                    _ = CompareOneAsync(probe);
                    pos += length;
                }
            }

            // Every probe has given its slot back once all slots can be taken.
            for (var i = 0; i < MaxOutstandingProbes; i++)
            {
                await slots.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }

        differingChunks.Sort();
        return new ComparePass(bytes, chunks, skipped, Merge(differingChunks, chunkBytes, volume.Size), error);
    }

    /// <summary>Adjacent differing chunks become one range; the last chunk ends at the volume's end.</summary>
    internal static List<VolumeRange> Merge(IReadOnlyList<long> sortedChunkOffsets, int chunkBytes, long size)
    {
        var merged = new List<VolumeRange>();
        foreach (var offset in sortedChunkOffsets)
        {
            var end = Math.Min(size, offset + chunkBytes);
            if (merged.Count > 0 && merged[^1].End == offset)
            {
                merged[^1] = merged[^1] with { Length = end - merged[^1].Offset };
            }
            else
            {
                merged.Add(new VolumeRange(offset, end - offset));
            }
        }

        return merged;
    }

    /// <summary>SHA-256 of each chunk of <paramref name="data"/>, 32 bytes each, concatenated.</summary>
    internal static byte[] HashChunks(ReadOnlySpan<byte> data, int chunkBytes)
    {
        var count = (data.Length + chunkBytes - 1) / chunkBytes;
        var hashes = new byte[count * ChecksumProbe.HashBytes];
        for (var i = 0; i < count; i++)
        {
            var start = i * chunkBytes;
            SHA256.HashData(data.Slice(start, Math.Min(chunkBytes, data.Length - start)), hashes.AsSpan(i * ChecksumProbe.HashBytes, ChecksumProbe.HashBytes));
        }

        return hashes;
    }

    /// <summary>
    /// The receiving side of a probe: hashes a range of this image as it is now. Called from the stream's apply
    /// loop, so every earlier record of the stream is applied and no later one.
    /// </summary>
    internal byte[] HashRangeForPeer(long offset, int length, int chunkBytes, byte[] buffer)
    {
        if (offset < 0 || length <= 0 || length > buffer.Length || offset > volume.Size - length)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"{offset}+{length} is outside the {volume.Size}-byte volume or the buffer");
        }

        lock (order)
        {
            image.Read(offset, buffer.AsSpan(0, length));
        }

        return HashChunks(buffer.AsSpan(0, length), chunkBytes);
    }

    /// <summary>
    /// The probing pass of a checksum resync: every dirty run (up to <see cref="MaxProbeBytes"/>) is read under the
    /// ordering lock and probed instead of sent; the chunks whose hashes differ go back to the bitmap, and the data
    /// pass (<see cref="Volume.RunResyncAsync"/>) that follows sends only those. Runs that are holes here go over as zero
    /// ranges at once (a header, no data). Returns when every probe is settled or the stream ended.
    /// </summary>
    internal async Task RunChecksumPassAsync(bool full, Action<string> log, CancellationToken cancellationToken)
    {
        var link = volume.Link!;
        if (!link.PeerChecksums)
        {
            log("checksum resync: the peer does not answer checksum requests (an older version); sending the data");
            return;
        }

        if (!link.HasDirty || !link.BeginResync(full))
        {
            return; // nothing left to probe (e.g. called again while the end marker of the last resync waits to go out)
        }

        log($"checksum resync: probing {link.Snapshot().DirtyBytes} dirty bytes before sending any data");

        var (_, _, equalBefore) = link.ChecksumCounters;
        var buffer = ArrayPool<byte>.Shared.Rent(MaxProbeBytes);
        var extents = new ImageExtent[4];
        using var slots = new SemaphoreSlim(MaxOutstandingProbes);
        long probed = 0;

        async Task SettleAsync(ChecksumProbe probe)
        {
            try
            {
                var peer = await probe.PeerHashes.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
                var local = probe.LocalHashes!;
                var differing = new List<(long, long)>();
                for (var i = 0; i < probe.Chunks; i++)
                {
                    var h = i * ChecksumProbe.HashBytes;
                    if (!local.AsSpan(h, ChecksumProbe.HashBytes).SequenceEqual(peer.AsSpan(h, ChecksumProbe.HashBytes)))
                    {
                        var start = probe.Offset + ((long)i * probe.ChunkBytes);
                        differing.Add((start, Math.Min(probe.ChunkBytes, probe.Offset + probe.Length - start)));
                    }
                }

                link.SettleResyncProbe(probe, differing);
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException)
            {
                // The stream ended: its close put the probe's range back in the bitmap.
            }
            finally
            {
                slots.Release();
            }
        }

        try
        {
            while (true)
            {
                cancellationToken.ThrowIfCancellationRequested();
                await link.WaitForResyncSpaceAsync(volume.Resync.IdleFillBytes, cancellationToken).ConfigureAwait(false);
                await slots.WaitAsync(cancellationToken).ConfigureAwait(false);
                ChecksumProbe? probe = null;
                bool took;
                lock (order)
                {
                    took = link.TakeChecksumRun(MaxProbeBytes, out var offset, out var length);
                    if (took)
                    {
                        var count = image.GetExtents(offset, length, extents);
                        if (count > 0 && extents[0].IsHole && extents[0].Offset <= offset && extents[0].End >= offset + length)
                        {
                            link.SubmitResync(offset, length, default, skip: false);
                        }
                        else
                        {
                            try
                            {
                                image.Read(offset, buffer.AsSpan(0, length));
                            }
                            catch (BlockImageException)
                            {
                                link.MarkDirty(offset, length);
                                throw;
                            }

                            probe = new ChecksumProbe(offset, length, ChecksumResyncChunk, resync: true);
                            if (!link.TryQueueProbe(probe))
                            {
                                probe = null; // the range is back in the bitmap; the stream ended or went ahead
                            }
                        }
                    }
                }

                if (probe is null)
                {
                    slots.Release();
                    if (!took)
                    {
                        break;
                    }

                    continue;
                }

                probe.LocalHashes = HashChunks(buffer.AsSpan(0, probe.Length), probe.ChunkBytes);
                probed += probe.Length;
                _ = SettleAsync(probe);
            }

            for (var i = 0; i < MaxOutstandingProbes; i++)
            {
                await slots.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }

        var (_, _, equalAfter) = link.ChecksumCounters;
        log($"checksum resync: {probed} bytes probed, {equalAfter - equalBefore} bytes already equal on the peer, "
            + $"{probed - (equalAfter - equalBefore)} bytes to send");
    }
}
