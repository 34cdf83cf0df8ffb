using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Text;
using BlockRepl.Core;

namespace BlockRepl.Iscsi;

/// <summary>
/// LUN 0 of a target: a direct-access block device (SBC-3) over a <see cref="Volume"/>. Every method is
/// thread-safe: several connections (sessions) run commands against the same unit at once.
/// </summary>
/// <remarks>
/// COMPARE AND WRITE is atomic against every other change of the medium: each command that changes it takes
/// <see cref="_mediumLock"/> while it hands the change to the volume (the local write happens inside
/// <see cref="Volume.Write"/> before it returns), and COMPARE AND WRITE reads, compares and writes under it.
/// Acknowledgements (replication, FUA) are awaited outside the lock.
/// </remarks>
internal sealed class ScsiLogicalUnit
{
    public const int BlockSize = 512;
    public const int BlockShift = 9;

    /// <summary>Largest READ/WRITE transfer, in blocks (Block Limits VPD MAXIMUM TRANSFER LENGTH): 4 MiB.</summary>
    public const int MaxTransferBlocks = 8192;

    public const int MaxCompareAndWriteBlocks = 64;
    public const uint MaxUnmapBlocks = 1u << 20;
    public const int MaxUnmapDescriptors = 256;
    public const uint MaxWriteSameBlocks = 1u << 15;
    public const int MaxGetLbaStatusDescriptors = 512;

    private readonly Volume _volume;
    private readonly Lock _mediumLock = new();
    private readonly ConcurrentDictionary<ScsiNexus, ushort> _unitAttentions = new();
    private readonly byte[] _naa;
    private readonly string _serial;

    public ScsiLogicalUnit(Volume volume)
    {
        _volume = volume;
        Reservations = new ScsiReservations(SetUnitAttention);
        var uuid = volume.VolumeUuid.ToByteArray(bigEndian: true);
        _naa = new byte[16];
        _naa[0] = 0x60; // NAA 6 (IEEE registered extended); the rest from the volume UUID
        uuid.AsSpan(0, 15).CopyTo(_naa.AsSpan(1));
        _serial = volume.VolumeUuid.ToString("N");
    }

    public ScsiReservations Reservations { get; }

    public long BlockCount => _volume.Size >> BlockShift;

    public bool ReadOnly => !_volume.IsWritable;

    public void SetUnitAttention(ScsiNexus nexus, ushort ascq) => _unitAttentions[nexus] = ascq;

    /// <summary>
    /// LOGICAL UNIT RESET (SAM-5 6.3.3): every I_T nexus, the requester's included, sees the unit attention
    /// BUS DEVICE RESET FUNCTION OCCURRED on its next command; SPC-2 reservations end.
    /// </summary>
    public void Reset(IEnumerable<ScsiNexus> nexuses)
    {
        Reservations.Reset();
        foreach (var nexus in nexuses)
        {
            SetUnitAttention(nexus, ScsiSense.BusDeviceResetOccurred);
        }
    }

    public void NexusLost(ScsiNexus nexus)
    {
        Reservations.NexusLost(nexus);
        _unitAttentions.TryRemove(nexus, out _);
    }

    /// <summary>
    /// Runs one command. <paramref name="dataOut"/> holds the Data-Out bytes the initiator sent (its expected
    /// transfer length); the result's Data-In is truncated to <paramref name="allocation"/> by the connection.
    /// </summary>
    public ValueTask<ScsiResult> Execute(ScsiNexus nexus, ulong lun, byte[] cdb, byte[]? dataOut, int dataOutLength)
    {
        var opcode = cdb[0];
        if (lun != 0)
        {
            return Done(opcode switch
            {
                0x12 => InquiryNoLun(cdb),
                0xA0 => ReportLuns(cdb),
                0x03 => RequestSense(nexus, cdb, ScsiSense.LogicalUnitNotSupported, ScsiSense.KeyIllegalRequest),
                _ => ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.LogicalUnitNotSupported),
            });
        }

        if (opcode is not (0x12 or 0xA0 or 0x03) && _unitAttentions.TryRemove(nexus, out var ua))
        {
            return Done(ScsiResult.Check(ScsiSense.KeyUnitAttention, ua));
        }

        var (reads, writes) = AccessOf(opcode);
        if (Reservations.Conflicts(nexus, reads, writes))
        {
            return Done(ScsiResult.WithStatus(ScsiSense.StatusReservationConflict));
        }

        var data = dataOut.AsSpan(0, dataOutLength);
        try
        {
            switch (opcode)
            {
                case 0x00: return Done(ScsiResult.Good); // TEST UNIT READY
                case 0x03: return Done(RequestSense(nexus, cdb, 0, ScsiSense.KeyNoSense));
                case 0x12: return Done(Inquiry(cdb));
                case 0xA0: return Done(ReportLuns(cdb));
                case 0x25: return Done(ReadCapacity10(cdb));
                case 0x1A: return Done(ModeSense(cdb, ten: false));
                case 0x5A: return Done(ModeSense(cdb, ten: true));
                case 0x1B: return Done(StartStopUnit(cdb));
                case 0x1E: return Done(PreventAllow());
                case 0x16 or 0x56: // RESERVE(6)/(10)
                    return Done(Reservations.Reserve6(nexus) ? ScsiResult.Good : ScsiResult.WithStatus(ScsiSense.StatusReservationConflict));
                case 0x17 or 0x57: // RELEASE(6)/(10)
                    Reservations.Release6(nexus);
                    return Done(ScsiResult.Good);
                case 0x5E: return Done(Reservations.In(nexus, cdb));
                case 0x5F: return Done(Reservations.Out(nexus, cdb, data));
                case 0xA3 when (cdb[1] & 0x1f) == 0x0C: return Done(ReportSupportedOperationCodes(cdb));
                case 0x9E when (cdb[1] & 0x1f) == 0x10: return Done(ReadCapacity16(cdb));
                case 0x9E when (cdb[1] & 0x1f) == 0x12: return Done(GetLbaStatus(cdb));
                case 0x08: return Read(cdb, Lba6(cdb), Blocks6(cdb));
                case 0x28: return Read(cdb, BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7)));
                case 0xA8: return Read(cdb, BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(6)));
                case 0x88: return Read(cdb, BinaryPrimitives.ReadUInt64BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10)));
                case 0x0A: return Write(cdb, Lba6(cdb), Blocks6(cdb), dataOut, dataOutLength, fua: false);
                case 0x2A or 0x2E: return Write(cdb, BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7)), dataOut, dataOutLength, Fua(cdb));
                case 0xAA or 0xAE: return Write(cdb, BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(6)), dataOut, dataOutLength, Fua(cdb));
                case 0x8A or 0x8E: return Write(cdb, BinaryPrimitives.ReadUInt64BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10)), dataOut, dataOutLength, Fua(cdb));
                case 0x2F: return Done(Verify(cdb, BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7)), data));
                case 0xAF: return Done(Verify(cdb, BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(6)), data));
                case 0x8F: return Done(Verify(cdb, BinaryPrimitives.ReadUInt64BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10)), data));
                case 0x34: return Done(Prefetch(cdb, BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7))));
                case 0x90: return Done(Prefetch(cdb, BinaryPrimitives.ReadUInt64BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10))));
                case 0x35: return SynchronizeCache(BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7)));
                case 0x91: return SynchronizeCache(BinaryPrimitives.ReadUInt64BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10)));
                case 0x41: return WriteSame(cdb, BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7)), data);
                case 0x93: return WriteSame(cdb, BinaryPrimitives.ReadUInt64BigEndian(cdb.AsSpan(2)), BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10)), data);
                case 0x42: return Unmap(cdb, data);
                case 0x89: return CompareAndWrite(cdb, dataOut, dataOutLength);
                case 0x8B: return OrWrite(cdb, dataOut, dataOutLength);
                case 0x37: return Done(ReadDefectData(cdb, twelve: false));
                case 0xB7: return Done(ReadDefectData(cdb, twelve: true));
                default: return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidOpcode));
            }
        }
        catch (VolumeReadOnlyException)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyDataProtect, ScsiSense.WriteProtected));
        }
        catch (BlockImageException)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyMediumError, writes ? ScsiSense.WriteError : ScsiSense.UnrecoveredReadError));
        }
    }

    private static ValueTask<ScsiResult> Done(ScsiResult result) => ValueTask.FromResult(result);

    /// <summary>Whether a command reads or changes the medium, for reservation conflicts (SPC-4 5.13.1 table 62).</summary>
    private static (bool Reads, bool Writes) AccessOf(byte opcode) => opcode switch
    {
        0x08 or 0x28 or 0xA8 or 0x88 or 0x2F or 0xAF or 0x8F or 0x34 or 0x90 or 0x1A or 0x5A => (true, false),
        0x0A or 0x2A or 0xAA or 0x8A or 0x2E or 0xAE or 0x8E or 0x41 or 0x93 or 0x42 or 0x89 or 0x8B or 0x35 or 0x91 => (false, true),
        0x1B => (false, true),
        0x16 or 0x56 => (false, false),
        _ => (false, false),
    };

    private static bool Fua(byte[] cdb) => (cdb[1] & 0x08) != 0;

    private static ulong Lba6(byte[] cdb) => ((uint)(cdb[1] & 0x1f) << 16) | ((uint)cdb[2] << 8) | cdb[3];

    private static uint Blocks6(byte[] cdb) => cdb[4] == 0 ? 256u : cdb[4];

    private ScsiResult? CheckRange(ulong lba, ulong blocks)
    {
        var count = (ulong)BlockCount;
        if (lba > count || blocks > count - lba)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.LbaOutOfRange);
        }

        return null;
    }

    /// <summary>
    /// READ(6/10/12/16). From the local image the result is ready at once (no allocation beyond the pooled data
    /// buffer); while the volume is diskless it completes when the peer answers, and no thread waits for it.
    /// </summary>
    private ValueTask<ScsiResult> Read(byte[] cdb, ulong lba, uint blocks)
    {
        // RDPROTECT needs protection information, which this unit does not have (SBC-3 5.8).
        if (cdb[0] != 0x08 && (cdb[1] & 0xe0) != 0)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        if (CheckRange(lba, blocks) is { } bad)
        {
            return Done(bad);
        }

        if (blocks > MaxTransferBlocks)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        if (blocks == 0)
        {
            return Done(ScsiResult.Good);
        }

        var length = (int)blocks << BlockShift;
        var buffer = ArrayPool<byte>.Shared.Rent(length);
        ValueTask read;
        try
        {
            read = _volume.ReadAsync((long)lba << BlockShift, buffer.AsMemory(0, length));
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(buffer);
            throw;
        }

        if (!read.IsCompletedSuccessfully)
        {
            return ReadLater(read, buffer, length);
        }

        _volume.CountRead(length);
        return Done(ScsiResult.WithData(buffer, length, pooled: true));
    }

    /// <summary>A read through the peer (diskless): the data, or the medium error a failed local read gets too.</summary>
    private async ValueTask<ScsiResult> ReadLater(ValueTask read, byte[] buffer, int length)
    {
        try
        {
            await read.ConfigureAwait(false);
        }
        catch (BlockImageException)
        {
            ArrayPool<byte>.Shared.Return(buffer);
            return ScsiResult.Check(ScsiSense.KeyMediumError, ScsiSense.UnrecoveredReadError);
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(buffer);
            throw;
        }

        _volume.CountRead(length);
        return ScsiResult.WithData(buffer, length, pooled: true);
    }

    private ValueTask<ScsiResult> Write(byte[] cdb, ulong lba, uint blocks, byte[]? data, int dataLength, bool fua)
    {
        if (cdb[0] != 0x0A && (cdb[1] & 0xe0) != 0)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        if (CheckRange(lba, blocks) is { } bad)
        {
            return Done(bad);
        }

        if (ReadOnly)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyDataProtect, ScsiSense.WriteProtected));
        }

        if (blocks > MaxTransferBlocks)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        var length = (int)blocks << BlockShift;
        if (blocks == 0)
        {
            return Done(ScsiResult.Good);
        }

        if (dataLength < length)
        {
            // The initiator's expected transfer length is shorter than the CDB's (an iSCSI overflow, RFC 7143
            // 11.4.5.1): only the whole blocks it sent are written; the residual tells it the rest was not.
            length = dataLength & ~(BlockSize - 1);
            if (length == 0)
            {
                return Done(ScsiResult.Good);
            }
        }

        if (cdb[0] is 0x2E or 0xAE or 0x8E)
        {
            fua = true; // WRITE AND VERIFY: the data is on the medium before the status (verification is the read-back of a page-cache write)
        }

        ValueTask ack;
        lock (_mediumLock)
        {
            ack = _volume.Write((long)lba << BlockShift, data.AsSpan(0, length), fua);
        }

        return Complete(ack);
    }

    private static ValueTask<ScsiResult> Complete(ValueTask ack)
    {
        if (ack.IsCompletedSuccessfully)
        {
            return Done(ScsiResult.Good);
        }

        return Await(ack);

        static async ValueTask<ScsiResult> Await(ValueTask ack)
        {
            try
            {
                await ack.ConfigureAwait(false);
                return ScsiResult.Good;
            }
            catch (VolumeReadOnlyException)
            {
                return ScsiResult.Check(ScsiSense.KeyDataProtect, ScsiSense.WriteProtected);
            }
            catch (Exception ex) when (ex is BlockImageException or IOException or InvalidOperationException or OperationCanceledException)
            {
                return ScsiResult.Check(ScsiSense.KeyMediumError, ScsiSense.WriteError);
            }
        }
    }

    private ScsiResult Verify(byte[] cdb, ulong lba, uint blocks, ReadOnlySpan<byte> data)
    {
        if ((cdb[1] & 0xe0) != 0)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb); // VRPROTECT
        }

        if (CheckRange(lba, blocks) is { } bad)
        {
            return bad;
        }

        var bytchk = (cdb[1] >> 1) & 0x03;
        if (bytchk == 0 || blocks == 0)
        {
            return ScsiResult.Good; // medium verification: the image is readable or reads would have failed
        }

        if (bytchk == 2 || blocks > MaxTransferBlocks)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
        }

        var length = (int)blocks << BlockShift;
        var expected = bytchk == 3 ? BlockSize : length;
        if (data.Length < expected)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.ParameterListLengthError);
        }

        var buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            _volume.Read((long)lba << BlockShift, buffer.AsSpan(0, length));
            for (var i = 0; i < length; i += expected)
            {
                var medium = buffer.AsSpan(i, expected);
                var at = medium.CommonPrefixLength(data[..expected]);
                if (at < expected)
                {
                    return ScsiResult.Check(ScsiSense.KeyMiscompare, ScsiSense.MiscompareDuringVerify, (ulong)(i + at));
                }
            }

            return ScsiResult.Good;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private ScsiResult Prefetch(byte[] cdb, ulong lba, uint blocks)
    {
        if (CheckRange(lba, blocks) is { } bad)
        {
            return bad;
        }

        if (blocks > 0)
        {
            _volume.Prefetch((long)lba << BlockShift, (long)blocks << BlockShift);
        }

        // SBC-3 5.9: CONDITION MET when the whole range fits in the cache, which a page cache always can claim.
        return ScsiResult.WithStatus(0x04);
    }

    private ValueTask<ScsiResult> SynchronizeCache(ulong lba, uint blocks)
    {
        if (CheckRange(lba, blocks) is { } bad)
        {
            return Done(bad);
        }

        return Complete(_volume.Flush());
    }

    private ValueTask<ScsiResult> WriteSame(byte[] cdb, ulong lba, uint blocks, ReadOnlySpan<byte> data)
    {
        if ((cdb[1] & 0xe0) != 0 || (cdb[1] & 0x10) != 0)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb)); // WRPROTECT, ANCHOR
        }

        var ndob = cdb[0] == 0x93 && (cdb[1] & 0x01) != 0;
        if (CheckRange(lba, blocks) is { } bad)
        {
            return Done(bad);
        }

        if (ReadOnly)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyDataProtect, ScsiSense.WriteProtected));
        }

        if (blocks == 0)
        {
            // WSNZ is 0 in the Block Limits page: zero blocks means "to the end of the medium" (SBC-3 5.41).
            blocks = (uint)Math.Min((ulong)BlockCount - lba, uint.MaxValue);
        }

        if (blocks > MaxWriteSameBlocks)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        if (!ndob && data.Length != BlockSize)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        var block = ndob ? default : data[..BlockSize];
        var offset = (long)lba << BlockShift;
        var length = (long)blocks << BlockShift;
        var unmap = (cdb[1] & 0x08) != 0;
        if (unmap || ndob || !block.ContainsAnyExcept((byte)0))
        {
            // UNMAP: the range is deallocated whatever the Data-Out holds, and reads back as zeroes (LBPRZ; SBC-3
            // 5.42, as Linux LIO does). Without it, an all-zero block is a zero range that stays allocated.
            ValueTask<bool> zero;
            lock (_mediumLock)
            {
                zero = _volume.Zero(offset, length, mayDeallocate: unmap, onlyIfFast: false, fua: false);
            }

            return Complete(zero.IsCompletedSuccessfully ? ValueTask.CompletedTask : new ValueTask(zero.AsTask()));
        }

        // A pattern: written in chunks of at most 1 MiB of repeated blocks.
        var chunk = (int)Math.Min(length, 1 << 20);
        var buffer = ArrayPool<byte>.Shared.Rent(chunk);
        try
        {
            for (var i = 0; i < chunk; i += BlockSize)
            {
                block.CopyTo(buffer.AsSpan(i));
            }

            var acks = new List<Task>();
            lock (_mediumLock)
            {
                for (long done = 0; done < length; done += chunk)
                {
                    var n = (int)Math.Min(chunk, length - done);
                    var ack = _volume.Write(offset + done, buffer.AsSpan(0, n), fua: false);
                    if (!ack.IsCompletedSuccessfully)
                    {
                        acks.Add(ack.AsTask());
                    }
                }
            }

            return Complete(acks.Count == 0 ? ValueTask.CompletedTask : new ValueTask(Task.WhenAll(acks)));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private ValueTask<ScsiResult> Unmap(byte[] cdb, ReadOnlySpan<byte> data)
    {
        if ((cdb[1] & 0x01) != 0)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb)); // ANCHOR
        }

        var listLength = BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7));
        if (listLength == 0)
        {
            return Done(ScsiResult.Good);
        }

        if (ReadOnly)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyDataProtect, ScsiSense.WriteProtected));
        }

        if (listLength < 8 || data.Length < Math.Min((int)listLength, 8))
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.ParameterListLengthError));
        }

        data = data[..Math.Min(data.Length, listLength)];
        var descriptorBytes = Math.Min(BinaryPrimitives.ReadUInt16BigEndian(data[2..]), data.Length - 8);
        var count = descriptorBytes / 16;
        if (count > MaxUnmapDescriptors)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInParameterList));
        }

        // Validate every descriptor before changing anything (SBC-3 5.28).
        for (var i = 0; i < count; i++)
        {
            var d = data.Slice(8 + (16 * i), 16);
            var lba = BinaryPrimitives.ReadUInt64BigEndian(d);
            var blocks = BinaryPrimitives.ReadUInt32BigEndian(d[8..]);
            if (CheckRange(lba, blocks) is { } bad)
            {
                return Done(bad);
            }

            if (blocks > MaxUnmapBlocks)
            {
                return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInParameterList));
            }
        }

        var acks = new List<Task>();
        lock (_mediumLock)
        {
            for (var i = 0; i < count; i++)
            {
                var d = data.Slice(8 + (16 * i), 16);
                var lba = BinaryPrimitives.ReadUInt64BigEndian(d);
                var blocks = BinaryPrimitives.ReadUInt32BigEndian(d[8..]);
                if (blocks == 0)
                {
                    continue;
                }

                var ack = _volume.Trim((long)lba << BlockShift, (long)blocks << BlockShift, fua: false);
                if (!ack.IsCompletedSuccessfully)
                {
                    acks.Add(ack.AsTask());
                }
            }
        }

        return Complete(acks.Count == 0 ? ValueTask.CompletedTask : new ValueTask(Task.WhenAll(acks)));
    }

    private ValueTask<ScsiResult> CompareAndWrite(byte[] cdb, byte[]? data, int dataLength)
    {
        if ((cdb[1] & 0xe0) != 0)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        var lba = BinaryPrimitives.ReadUInt64BigEndian(cdb.AsSpan(2));
        var blocks = cdb[13];
        if (blocks > MaxCompareAndWriteBlocks)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        if (CheckRange(lba, blocks) is { } bad)
        {
            return Done(bad);
        }

        if (ReadOnly)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyDataProtect, ScsiSense.WriteProtected));
        }

        var length = blocks << BlockShift;
        if (dataLength != 2 * length)
        {
            // The Data-Out must be exactly the verify and write instances (SBC-3 5.2); a 256-block request wraps to 0.
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        if (blocks == 0)
        {
            return Done(ScsiResult.Good);
        }

        var offset = (long)lba << BlockShift;
        var current = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            ValueTask ack;
            lock (_mediumLock)
            {
                _volume.Read(offset, current.AsSpan(0, length));
                var same = current.AsSpan(0, length).CommonPrefixLength(data.AsSpan(0, length));
                if (same < length)
                {
                    // SBC-3 5.2: MISCOMPARE, INFORMATION = offset of the first byte that differs.
                    return Done(ScsiResult.Check(ScsiSense.KeyMiscompare, ScsiSense.MiscompareDuringVerify, (ulong)same));
                }

                ack = _volume.Write(offset, data.AsSpan(length, length), Fua(cdb));
            }

            return Complete(ack);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(current);
        }
    }

    /// <summary>
    /// ORWRITE(16) (SBC-3 5.13): each byte of the range becomes its old value OR the Data-Out byte, as one step
    /// under the medium lock (the same atomicity as COMPARE AND WRITE).
    /// </summary>
    private ValueTask<ScsiResult> OrWrite(byte[] cdb, byte[]? data, int dataLength)
    {
        if ((cdb[1] & 0xe0) != 0)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb)); // ORPROTECT
        }

        var lba = BinaryPrimitives.ReadUInt64BigEndian(cdb.AsSpan(2));
        var blocks = BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10));
        if (CheckRange(lba, blocks) is { } bad)
        {
            return Done(bad);
        }

        if (ReadOnly)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyDataProtect, ScsiSense.WriteProtected));
        }

        if (blocks > MaxTransferBlocks)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        var length = (int)blocks << BlockShift;
        if (blocks == 0)
        {
            return Done(ScsiResult.Good);
        }

        if (dataLength < length)
        {
            return Done(ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb));
        }

        var offset = (long)lba << BlockShift;
        var merged = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            ValueTask ack;
            lock (_mediumLock)
            {
                var span = merged.AsSpan(0, length);
                _volume.Read(offset, span);
                var source = data.AsSpan(0, length);
                for (var i = 0; i < length; i++)
                {
                    span[i] |= source[i];
                }

                ack = _volume.Write(offset, span, Fua(cdb));
            }

            return Complete(ack);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(merged);
        }
    }

    /// <summary>READ DEFECT DATA(10)/(12) (SBC-3 5.20, 5.21): a file-backed volume has no defects; the lists are empty.</summary>
    private static ScsiResult ReadDefectData(byte[] cdb, bool twelve)
    {
        var flags = (byte)(cdb[twelve ? 1 : 2] & 0x1f); // REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT
        var allocation = twelve ? BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(6)) : BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7));
        var data = new byte[twelve ? 8 : 4];
        data[1] = flags; // PLISTV/GLISTV as requested, the list format echoed; the list length stays 0
        return ScsiResult.WithData(data, (int)Math.Min(data.Length, allocation));
    }

    private ScsiResult RequestSense(ScsiNexus nexus, byte[] cdb, ushort ascq, byte key)
    {
        if (key == ScsiSense.KeyNoSense && _unitAttentions.TryRemove(nexus, out var ua))
        {
            key = ScsiSense.KeyUnitAttention;
            ascq = ua;
        }

        var allocation = cdb[4];
        byte[] sense;
        if ((cdb[1] & 0x01) != 0)
        {
            sense = new byte[8]; // descriptor format (SPC-4 4.5.2)
            sense[0] = 0x72;
            sense[1] = key;
            sense[2] = (byte)(ascq >> 8);
            sense[3] = (byte)ascq;
        }
        else
        {
            sense = ScsiSense.Fixed(key, ascq);
        }

        return ScsiResult.WithData(sense, Math.Min(sense.Length, (int)allocation));
    }

    private static ScsiResult InquiryNoLun(byte[] cdb)
    {
        var data = new byte[36];
        data[0] = 0x7f; // peripheral qualifier 011b: no logical unit here
        data[2] = 0x06;
        data[3] = 0x12;
        data[4] = 31;
        return ScsiResult.WithData(data, Math.Min(data.Length, BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(3))));
    }

    private ScsiResult Inquiry(byte[] cdb)
    {
        var allocation = BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(3));
        var evpd = (cdb[1] & 0x01) != 0;
        if ((cdb[1] & 0x02) != 0 || (!evpd && cdb[2] != 0))
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb); // CMDDT, or a page without EVPD
        }

        byte[] data;
        if (!evpd)
        {
            // Standard INQUIRY data (SPC-4 6.6.2).
            data = new byte[96];
            data[0] = 0x00;              // direct-access block device, connected
            data[2] = 0x06;              // SPC-4
            data[3] = 0x12;              // HISUP, response data format 2
            data[4] = (byte)(data.Length - 5);
            data[7] = 0x02;              // CMDQUE
            Ascii("BLOCKREP", 8).CopyTo(data.AsSpan(8));
            Ascii("blockrepl volume", 16).CopyTo(data.AsSpan(16));
            Ascii("0001", 4).CopyTo(data.AsSpan(32));
            ushort[] versions = [0x00C0 /* SAM-5 */, 0x0960 /* iSCSI */, 0x0460 /* SPC-4 */, 0x04C0 /* SBC-3 */];
            for (var i = 0; i < versions.Length; i++)
            {
                BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(58 + (2 * i)), versions[i]);
            }
        }
        else
        {
            data = cdb[2] switch
            {
                0x00 => VpdPage(0x00, [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]),
                0x80 => VpdPage(0x80, Ascii(_serial, _serial.Length)),
                0x83 => VpdPage(0x83, DeviceIdentification()),
                0xB0 => VpdPage(0xB0, BlockLimits()),
                0xB1 => VpdPage(0xB1, [0x00, 0x01, 0, 0, 0, 0, .. new byte[54]]), // non-rotating medium
                0xB2 => VpdPage(0xB2, [0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00]), // LBPU, LBPWS, LBPWS10, LBPRZ; thin
                _ => [],
            };
            if (data.Length == 0)
            {
                return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
            }
        }

        return ScsiResult.WithData(data, Math.Min(data.Length, (int)allocation));
    }

    private static byte[] VpdPage(byte code, byte[] body)
    {
        var page = new byte[4 + body.Length];
        page[1] = code;
        BinaryPrimitives.WriteUInt16BigEndian(page.AsSpan(2), (ushort)body.Length);
        body.CopyTo(page.AsSpan(4));
        return page;
    }

    private byte[] DeviceIdentification()
    {
        // Designators (SPC-4 7.8.6): NAA 6 of the logical unit, then a T10 vendor ID one with the serial number.
        var t10 = Ascii("BLOCKREP" + _serial, 8 + _serial.Length);
        var body = new byte[4 + _naa.Length + 4 + t10.Length];
        body[0] = 0x01;          // code set binary
        body[1] = 0x03;          // association LU, designator type NAA
        body[3] = (byte)_naa.Length;
        _naa.CopyTo(body.AsSpan(4));
        var at = 4 + _naa.Length;
        body[at] = 0x02;         // code set ASCII
        body[at + 1] = 0x01;     // association LU, T10 vendor ID
        body[at + 3] = (byte)t10.Length;
        t10.CopyTo(body.AsSpan(at + 4));
        return body;
    }

    private static byte[] BlockLimits()
    {
        var b = new byte[0x3c];
        // Offsets below are of the page minus its 4-byte header (SBC-3 6.5.3).
        b[1] = MaxCompareAndWriteBlocks;
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(2), 8);                   // optimal granularity: 4 KiB
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(4), MaxTransferBlocks);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), 2048);                // optimal transfer: 1 MiB
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), MaxTransferBlocks);  // max prefetch
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), MaxUnmapBlocks);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), MaxUnmapDescriptors);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), 8);                  // optimal unmap granularity
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(32), MaxWriteSameBlocks);
        return b;
    }

    private static byte[] Ascii(string text, int length)
    {
        var bytes = Enumerable.Repeat((byte)' ', length).ToArray();
        Encoding.ASCII.GetBytes(text.AsSpan(0, Math.Min(text.Length, length)), bytes);
        return bytes;
    }

    private static ScsiResult ReportLuns(byte[] cdb)
    {
        var allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(6));
        if (cdb[2] is not (0x00 or 0x01 or 0x02))
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
        }

        if (allocation < 16)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
        }

        var data = new byte[16];
        data[3] = 8; // one LUN: 0
        return ScsiResult.WithData(data, data.Length);
    }

    private ScsiResult ReadCapacity10(byte[] cdb)
    {
        if ((cdb[8] & 0x01) == 0 && BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(2)) != 0)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb); // LBA without PMI
        }

        var data = new byte[8];
        var last = BlockCount - 1;
        BinaryPrimitives.WriteUInt32BigEndian(data, last > uint.MaxValue ? uint.MaxValue : (uint)last);
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(4), BlockSize);
        return ScsiResult.WithData(data, data.Length);
    }

    private ScsiResult ReadCapacity16(byte[] cdb)
    {
        var allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10));
        var data = new byte[32];
        BinaryPrimitives.WriteUInt64BigEndian(data, (ulong)(BlockCount - 1));
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(8), BlockSize);
        // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0: a 512-byte block is unmapped or written on its own
        // (the image zeroes partial filesystem blocks), so GET LBA STATUS is exact to the logical block.
        data[14] = 0x80 | 0x40; // LBPME, LBPRZ: unmapped blocks read as zeroes
        return ScsiResult.WithData(data, (int)Math.Min(data.Length, allocation));
    }

    private ScsiResult GetLbaStatus(byte[] cdb)
    {
        var lba = BinaryPrimitives.ReadUInt64BigEndian(cdb.AsSpan(2));
        var allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(10));
        if (lba >= (ulong)BlockCount)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.LbaOutOfRange);
        }

        var maxDescriptors = (int)Math.Clamp((allocation - 8L) / 16, 1, MaxGetLbaStatusDescriptors);
        Span<ImageExtent> extents = new ImageExtent[maxDescriptors];
        var offset = (long)lba << BlockShift;
        var count = _volume.GetExtents(offset, _volume.Size - offset, extents);
        var data = new byte[8 + (16 * Math.Max(count, 1))];
        var n = 0;
        var cursor = lba; // the next block to describe: descriptors are contiguous from the requested LBA
        for (var i = 0; i < count; i++)
        {
            var e = extents[i];
            // A block that holds any data is mapped: data extents round outwards, holes inwards.
            var end = e.IsHole ? (ulong)(e.End >> BlockShift) : (ulong)((e.End + BlockSize - 1) >> BlockShift);
            if (end <= cursor)
            {
                continue;
            }

            var status = (byte)(e.IsHole ? 1 : 0); // 0 mapped, 1 deallocated
            if (n > 0 && data[8 + (16 * (n - 1)) + 12] == status)
            {
                var prev = data.AsSpan(8 + (16 * (n - 1)));
                BinaryPrimitives.WriteUInt32BigEndian(prev[8..], (uint)Math.Min(end - BinaryPrimitives.ReadUInt64BigEndian(prev), uint.MaxValue));
            }
            else
            {
                var d = data.AsSpan(8 + (16 * n));
                BinaryPrimitives.WriteUInt64BigEndian(d, cursor);
                BinaryPrimitives.WriteUInt32BigEndian(d[8..], (uint)Math.Min(end - cursor, uint.MaxValue));
                d[12] = status;
                n++;
            }

            cursor = end;
        }

        var length = 8 + (16 * n);
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)(length - 4));
        return ScsiResult.WithData(data, (int)Math.Min(length, allocation));
    }

    private ScsiResult ModeSense(byte[] cdb, bool ten)
    {
        var dbd = (cdb[1] & 0x08) != 0;
        var pc = cdb[2] >> 6;
        var page = cdb[2] & 0x3f;
        var subpage = cdb[3];
        var allocation = ten ? BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(7)) : cdb[4];
        if (pc == 3)
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.SavingParametersNotSupported);
        }

        if (subpage != 0 && !(page == 0x3f && subpage == 0xff))
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
        }

        var changeable = pc == 1;
        var pages = new List<byte>();
        void Caching()
        {
            // Caching mode page (SBC-3 6.4.5): WCE, the volume has a write-back cache (FUA and SYNCHRONIZE CACHE reach the disk).
            var p = new byte[20];
            p[0] = 0x08;
            p[1] = 0x12;
            p[2] = changeable ? (byte)0 : (byte)0x04;
            pages.AddRange(p);
        }

        void Control()
        {
            // Control mode page (SPC-4 7.5.8): QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering).
            var p = new byte[12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            p[3] = changeable ? (byte)0 : (byte)0x10;
            pages.AddRange(p);
        }

        switch (page)
        {
            case 0x08: Caching(); break;
            case 0x0a: Control(); break;
            case 0x3f: Caching(); Control(); break;
            default: return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
        }

        var descriptor = dbd ? [] : BlockDescriptor();
        var header = ten ? 8 : 4;
        var data = new byte[header + descriptor.Length + pages.Count];
        var deviceSpecific = (byte)((ReadOnly ? 0x80 : 0) | 0x10); // WP, DPOFUA
        if (ten)
        {
            BinaryPrimitives.WriteUInt16BigEndian(data, (ushort)(data.Length - 2));
            data[3] = deviceSpecific;
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6), (ushort)descriptor.Length);
        }
        else
        {
            data[0] = (byte)(data.Length - 1);
            data[2] = deviceSpecific;
            data[3] = (byte)descriptor.Length;
        }

        descriptor.CopyTo(data.AsSpan(header));
        pages.CopyTo(data.AsSpan(header + descriptor.Length));
        return ScsiResult.WithData(data, Math.Min(data.Length, (int)allocation));
    }

    /// <summary>The short (8-byte) mode parameter block descriptor (SBC-3 6.4.4.2), for both MODE SENSE sizes (LONGLBA 0).</summary>
    private byte[] BlockDescriptor()
    {
        var d = new byte[8];
        var blocks = BlockCount > 0xffffff ? 0xffffffu : (uint)BlockCount;
        BinaryPrimitives.WriteUInt32BigEndian(d, blocks);
        d[0] = 0; // density code
        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(4), BlockSize);
        d[4] = 0;
        return d;
    }

    private static ScsiResult StartStopUnit(byte[] cdb)
    {
        var powerCondition = cdb[4] >> 4;
        if (powerCondition is not (0 or 1 or 2 or 3 or 5 or 7 or 0xa or 0xb))
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
        }

        return ScsiResult.Good; // no medium to load or eject; power conditions are not modelled
    }

    /// <summary>PREVENT ALLOW MEDIUM REMOVAL: RMB is 0, the medium is not removable, so there is nothing to prevent.</summary>
    private static ScsiResult PreventAllow() => ScsiResult.Good;

    /// <summary>Commands this unit runs, with their CDB length, for REPORT SUPPORTED OPERATION CODES.</summary>
    private static readonly (byte Opcode, ushort ServiceAction, bool HasServiceAction, byte CdbLength)[] Supported =
    [
        (0x00, 0, false, 6), (0x03, 0, false, 6), (0x08, 0, false, 6), (0x0A, 0, false, 6), (0x12, 0, false, 6),
        (0x16, 0, false, 6), (0x17, 0, false, 6), (0x1A, 0, false, 6), (0x1B, 0, false, 6), (0x1E, 0, false, 6),
        (0x25, 0, false, 10), (0x28, 0, false, 10), (0x2A, 0, false, 10), (0x2E, 0, false, 10), (0x2F, 0, false, 10),
        (0x34, 0, false, 10), (0x35, 0, false, 10), (0x41, 0, false, 10), (0x42, 0, false, 10), (0x56, 0, false, 10),
        (0x57, 0, false, 10), (0x5A, 0, false, 10), (0x5E, 0, true, 10), (0x5E, 1, true, 10), (0x5E, 2, true, 10),
        (0x5E, 3, true, 10), (0x5F, 0, true, 10), (0x5F, 1, true, 10), (0x5F, 2, true, 10), (0x5F, 3, true, 10),
        (0x5F, 4, true, 10), (0x5F, 5, true, 10), (0x5F, 6, true, 10), (0x88, 0, false, 16), (0x89, 0, false, 16),
        (0x8A, 0, false, 16), (0x8E, 0, false, 16), (0x8F, 0, false, 16), (0x90, 0, false, 16), (0x91, 0, false, 16),
        (0x93, 0, false, 16), (0x8B, 0, false, 16), (0x37, 0, false, 10), (0xB7, 0, false, 12), (0x9E, 0x10, true, 16), (0x9E, 0x12, true, 16), (0xA0, 0, false, 12),
        (0xA3, 0x0C, true, 12), (0xA8, 0, false, 12), (0xAA, 0, false, 12), (0xAE, 0, false, 12), (0xAF, 0, false, 12),
    ];

    private static ScsiResult ReportSupportedOperationCodes(byte[] cdb)
    {
        var options = cdb[2] & 0x07;
        var rctd = (cdb[2] & 0x80) != 0;
        var opcode = cdb[3];
        var serviceAction = BinaryPrimitives.ReadUInt16BigEndian(cdb.AsSpan(4));
        var allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.AsSpan(6));
        byte[] data;
        if (options == 0)
        {
            var size = rctd ? 20 : 8;
            data = new byte[4 + (size * Supported.Length)];
            BinaryPrimitives.WriteUInt32BigEndian(data, (uint)(data.Length - 4));
            for (var i = 0; i < Supported.Length; i++)
            {
                var (op, sa, hasSa, len) = Supported[i];
                var d = data.AsSpan(4 + (size * i));
                d[0] = op;
                BinaryPrimitives.WriteUInt16BigEndian(d[2..], sa);
                d[5] = (byte)((hasSa ? 0x01 : 0) | (rctd ? 0x02 : 0));
                BinaryPrimitives.WriteUInt16BigEndian(d[6..], len);
                if (rctd)
                {
                    BinaryPrimitives.WriteUInt16BigEndian(d[8..], 0x0a); // command timeouts descriptor: none given
                }
            }
        }
        else if (options is 1 or 2)
        {
            var entries = Supported.Where(s => s.Opcode == opcode).ToList();
            if (options == 1 && entries.Any(e => e.HasServiceAction))
            {
                return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
            }

            if (options == 2 && entries.Count > 0 && !entries[0].HasServiceAction)
            {
                return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
            }

            var match = entries.FirstOrDefault(e => options == 1 || e.ServiceAction == serviceAction);
            var found = entries.Count > 0 && (options == 1 || entries.Any(e => e.ServiceAction == serviceAction));
            var cdbLength = found ? match.CdbLength : 0;
            var timeouts = rctd ? 12 : 0;
            data = new byte[4 + cdbLength + timeouts];
            data[1] = (byte)((rctd ? 0x80 : 0) | (found ? 0x03 : 0x01)); // SUPPORT: 011b per the standard, 001b not supported
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(2), (ushort)cdbLength);
            if (found)
            {
                // CDB usage data: which bits of the CDB the command looks at.
                var usage = data.AsSpan(4, cdbLength);
                usage.Fill(0xff);
                usage[0] = opcode;
                if (match.HasServiceAction)
                {
                    usage[1] = (byte)(0xe0 | match.ServiceAction);
                }

                usage[cdbLength - 1] = 0x07; // CONTROL byte: only NACA and the link bits are defined
            }

            if (rctd)
            {
                BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + cdbLength), 0x0a);
            }
        }
        else
        {
            return ScsiResult.Check(ScsiSense.KeyIllegalRequest, ScsiSense.InvalidFieldInCdb);
        }

        return ScsiResult.WithData(data, (int)Math.Min(data.Length, allocation));
    }
}
