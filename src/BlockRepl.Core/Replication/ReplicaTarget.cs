using BlockRepl.Core.Journal;

namespace BlockRepl.Core.Replication;

/// <summary>
/// The receiving side of replication on a secondary: its description for a receiver's handshake decision, its
/// connection state, the adoption of a sender's volume identity, the checks and apply of each replicated record,
/// the sender's announced progress, and the begin and end of a resync that targets this node. Every volume has
/// one (<see cref="Volume.Target"/>); the gRPC receiver (ReplicaService) drives it.
/// </summary>
/// <remarks>
/// Threading: a record is applied under the volume's ordering lock (<see cref="Volume.OrderLock"/>), metadata
/// changes under its metadata gate (<see cref="Volume.MetaGate"/>), in the order of <see cref="LocksAndLimits"/>;
/// this type has no lock of its own. The connection state is one volatile value, the sender's progress three
/// interlocked counters.
/// </remarks>
internal sealed class ReplicaTarget
{
    private readonly Volume _volume;
    private volatile ConnectionState _connection = ConnectionState.Standalone;
    private ulong _senderLastSeq;
    private ulong _senderUnsentBytes;
    private ulong _appliedSeq;

    internal ReplicaTarget(Volume volume) => _volume = volume;

    /// <summary>The connection state seen from the receiving side (and of a secondary whose sender is away).</summary>
    internal ConnectionState Connection => _connection;

    /// <summary>The one place the receiving side's connection state changes; the volume's history records it.</summary>
    internal void SetConnection(ConnectionState state)
    {
        _connection = state;
        _volume.ConnectionHistory.Enter(_volume.Connection);
        _volume.Changes.Pulse();
    }

    /// <summary>Identity and generations for a receiver's handshake decision.</summary>
    internal StreamOpening DescribeForReceiver()
    {
        lock (_volume.MetaGate)
        {
            var metadata = _volume.Metadata;
            return new StreamOpening(0, metadata.VolumeUuid, metadata.NodeId,
                new GenerationInfo(metadata.CurrentGeneration, metadata.BitmapGeneration, [.. metadata.HistoryGenerations],
                    metadata.Fresh, metadata.NeedsFullSync, metadata.DiscardMyData));
        }
    }

    /// <summary>This node's own dirty runs, for the handshake reply of a receiver that will be resynced.</summary>
    internal List<ulong> OwnDirtyRuns(int maxPairs) => _volume.Source?.Link.DirtyRuns(maxPairs) ?? [];

    /// <summary>A fresh node takes the identity of the volume it is about to receive.</summary>
    internal void AdoptVolumeUuid(Guid uuid)
    {
        lock (_volume.MetaGate)
        {
            _volume.Metadata.VolumeUuid = uuid;
            _volume.SaveMetadataLocked();
        }
    }

    /// <summary>
    /// Applies one replicated record to the image (a secondary's only way to change it). Refused with
    /// <see cref="VolumeReadOnlyException"/> unless the volume is secondary, and with
    /// <see cref="JournalFormatException"/> when the record lies outside the volume or has an unknown kind.
    /// </summary>
    internal void ApplyRecord(in JournalRecordHeader header, ReadOnlySpan<byte> payload)
    {
        // Under the ordering lock: a promotion flips the role under it too, so no replicated write can land
        // after the first write of the new primary.
        lock (_volume.OrderLock)
        {
            if (_volume.Role != VolumeRole.Secondary)
            {
                throw new VolumeReadOnlyException($"volume {_volume.Name} is {_volume.Role.Name()}: it applies no replicated writes");
            }

            ApplyRecordLocked(header, payload);
        }
    }

    private void ApplyRecordLocked(in JournalRecordHeader header, ReadOnlySpan<byte> payload)
    {
        var size = _volume.Size;
        var offset = (long)header.Offset;
        var length = (long)header.Length;
        if (header.Kind != JournalRecordKind.Flush && (offset < 0 || length < 0 || offset > size || length > size - offset))
        {
            throw new JournalFormatException($"record seq {header.Seq}: {offset}+{length} is outside the {size}-byte volume");
        }

        var image = _volume.Image;
        switch (header.Kind)
        {
            case JournalRecordKind.Write:
                image.Write(offset, payload);
                break;
            case JournalRecordKind.Trim:
            case JournalRecordKind.Zero:
                // A trimmed range reads back as zeroes on the primary's image too (hole punch), so the images stay
                // byte-identical only if the replica zeroes it as well.
                image.Zero(offset, length, mayDeallocate: true, onlyIfFast: false);
                break;
            case JournalRecordKind.Flush:
                break;
            default:
                throw new JournalFormatException($"record seq {header.Seq}: unknown kind {(byte)header.Kind}");
        }
    }

    /// <summary>fdatasync of the image (a replicated flush or FUA write, or the periodic one).</summary>
    internal Task FlushImageAsync() => _volume.FlushImageAsync();

    /// <summary>Records the sender's last announcement: its last seq, what it has not sent, and what this node applied.</summary>
    internal void NoteSenderProgress(ulong senderLastSeq, ulong senderUnsentBytes, ulong appliedSeq)
    {
        Interlocked.Exchange(ref _senderLastSeq, senderLastSeq);
        Interlocked.Exchange(ref _senderUnsentBytes, senderUnsentBytes);
        Interlocked.Exchange(ref _appliedSeq, appliedSeq);
    }

    /// <summary>What a secondary knows it has not received (from the primary's last announcement).</summary>
    internal (ulong Records, ulong Bytes) KnownMissing
    {
        get
        {
            var last = Interlocked.Read(ref _senderLastSeq);
            var applied = Interlocked.Read(ref _appliedSeq);
            return (last > applied ? last - applied : 0, Interlocked.Read(ref _senderUnsentBytes));
        }
    }

    /// <summary>The resync begins: until its end this image is not a usable copy (persisted first).</summary>
    internal void BeginSyncTarget()
    {
        lock (_volume.MetaGate)
        {
            _volume.SetDisk(DiskState.Inconsistent);
            var metadata = _volume.Metadata;
            metadata.Disk = DiskState.Inconsistent.Name();
            metadata.Fresh = false; // from the first resync record on, holes here may not be skipped any more
            _volume.SaveMetadataLocked();
        }

        SetConnection(ConnectionState.SyncTarget);
    }

    /// <summary>The resync ended: flush, adopt the source's generation, up to date again.</summary>
    internal async Task EndSyncTargetAsync(ulong generation, bool full)
    {
        await FlushImageAsync().ConfigureAwait(false);
        lock (_volume.MetaGate)
        {
            _volume.SetDisk(DiskState.UpToDate);
            var metadata = _volume.Metadata;
            metadata.Disk = DiskState.UpToDate.Name();
            if (generation != 0)
            {
                metadata.StartGeneration(generation);
            }

            metadata.Fresh = false;
            if (full)
            {
                metadata.NeedsFullSync = false;
            }

            // Everything this node had changed itself (its bitmap, sent to the source at the handshake) is
            // overwritten now: it holds exactly the source's generation.
            metadata.BitmapGeneration = 0;
            metadata.DiscardMyData = false;
            _volume.Source?.Link.ClearAllAndPersist();
            _volume.SaveMetadataLocked();
        }

        _volume.ClearRecoveryNote();
        SetConnection(ConnectionState.Connected);
    }
}
