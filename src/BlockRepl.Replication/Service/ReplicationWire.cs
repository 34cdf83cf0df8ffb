using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using BlockRepl.Replication.V1;
using Google.Protobuf;
using Google.Protobuf.Reflection;
using Grpc.Core;

namespace BlockRepl.Replication.Service;

/// <summary>
/// The Replicate method as both sides call and serve it: the generated messages of proto/blockrepl/v1/replication.proto,
/// with one difference from the generated marshaller on the receiving side. A <see cref="Batch"/> frame's records
/// (up to the message limit, 1 MiB a batch during a resync) are parsed into a pooled buffer instead of a new array per
/// batch; the apply loop hands it back with <see cref="ReturnRecords"/> once the batch is applied.
/// </summary>
/// <remarks>
/// The bytes on the wire are protobuf's, unchanged: the fast path reads exactly one field, <c>batch = 2</c>, and the
/// <see cref="Batch"/> fields by their numbers and wire types. Anything else (another frame type, an unknown field, a
/// malformed or unusual encoding) goes to the generated parser, which also reports the errors. Tests compare the two
/// parsers on generated and random inputs.
/// </remarks>
internal static class ReplicationWire
{
    private const uint BatchFrameTag = (2 << 3) | 2; // ReplicationFrame.batch, length-delimited

    private static readonly Lock LeaseGate = new();
    private static readonly HashSet<byte[]> Leased = new(ReferenceEqualityComparer.Instance); // guarded by LeaseGate

    public static readonly Marshaller<ReplicationFrame> Frames = Marshallers.Create<ReplicationFrame>(Serialize, DeserializeFrame);

    public static readonly Marshaller<ReplicationAck> Acks = Marshallers.Create<ReplicationAck>(
        Serialize, context => ReplicationAck.Parser.ParseFrom(context.PayloadAsReadOnlySequence()));

    /// <summary>blockrepl.v1.Replication/Replicate.</summary>
    public static readonly Method<ReplicationFrame, ReplicationAck> Replicate = new(
        MethodType.DuplexStreaming, V1.Replication.Descriptor.FullName, "Replicate", Frames, Acks);

    /// <summary>The service's descriptor (server reflection finds it here, beside <see cref="BindService"/>).</summary>
    public static ServiceDescriptor Descriptor => V1.Replication.Descriptor;

    /// <summary>Binds <see cref="ReplicaService"/> with <see cref="Replicate"/> (named by its BindServiceMethod attribute).</summary>
    public static void BindService(ServiceBinderBase binder, ReplicationServiceBase? service) =>
        binder.AddMethod(Replicate, service is null ? null : new DuplexStreamingServerMethod<ReplicationFrame, ReplicationAck>(service.Replicate));

    /// <summary>Bytes currently lent out to batches not yet applied (tests: none after a stream ends).</summary>
    public static int LeasedBuffers
    {
        get
        {
            lock (LeaseGate)
            {
                return Leased.Count;
            }
        }
    }

    /// <summary>Gives a batch's pooled records buffer back (no-op for a batch the generated parser built).</summary>
    public static void ReturnRecords(Batch batch)
    {
        if (!MemoryMarshal.TryGetArray(batch.CompressedRecords.Memory, out var segment) || segment.Array is not { } array)
        {
            return;
        }

        lock (LeaseGate)
        {
            if (!Leased.Remove(array))
            {
                return;
            }
        }

        ArrayPool<byte>.Shared.Return(array);
    }

    private static void Serialize<T>(T message, SerializationContext context)
        where T : IBufferMessage, IMessage
    {
        context.SetPayloadLength(message.CalculateSize());
        message.WriteTo(context.GetBufferWriter());
        context.Complete();
    }

    private static ReplicationFrame DeserializeFrame(DeserializationContext context)
    {
        var payload = context.PayloadAsReadOnlySequence();
        return TryParseBatchFrame(payload) ?? ReplicationFrame.Parser.ParseFrom(payload);
    }

    /// <summary>The fast path: a frame that is exactly one well-formed batch, its records in a leased buffer; else null.</summary>
    internal static ReplicationFrame? TryParseBatchFrame(ReadOnlySequence<byte> payload)
    {
        var reader = new SequenceReader<byte>(payload);
        if (!TryReadVarint(ref reader, out var tag) || tag != BatchFrameTag
            || !TryReadVarint(ref reader, out var length) || length != (ulong)reader.Remaining)
        {
            return null;
        }

        var batch = new Batch();
        byte[]? records = null;
        var recordsLength = 0;
        while (!reader.End)
        {
            if (!TryReadVarint(ref reader, out var fieldTag) || fieldTag > uint.MaxValue || (fieldTag >> 3) == 0)
            {
                return Abandon(records);
            }

            var wireType = (int)(fieldTag & 7);
            ulong value = 0;
            switch (wireType)
            {
                case 0:
                    if (!TryReadVarint(ref reader, out value))
                    {
                        return Abandon(records);
                    }

                    break;
                case 5:
                    if (!reader.TryReadLittleEndian(out int fixed32))
                    {
                        return Abandon(records);
                    }

                    value = (uint)fixed32;
                    break;
                case 2:
                    if (!TryReadVarint(ref reader, out var size) || size > (ulong)reader.Remaining)
                    {
                        return Abandon(records);
                    }

                    if (fieldTag != ((4 << 3) | 2))
                    {
                        return Abandon(records);
                    }

                    // compressed_records: the last occurrence wins, as in protobuf.
                    Abandon(records);
                    recordsLength = (int)size;
                    records = recordsLength == 0 ? null : ArrayPool<byte>.Shared.Rent(recordsLength);
                    if (records is not null)
                    {
                        reader.UnreadSequence.Slice(0, recordsLength).CopyTo(records);
                    }

                    reader.Advance((long)size);
                    continue;
                default:
                    return Abandon(records); // fixed64 (no Batch field), groups, invalid wire types
            }

            switch (fieldTag)
            {
                case (1 << 3) | 0:
                    batch.FirstSeq = value;
                    break;
                case (2 << 3) | 0:
                    batch.RecordCount = (uint)value;
                    break;
                case (3 << 3) | 0:
                    batch.UncompressedLength = (uint)value;
                    break;
                case (5 << 3) | 5:
                    batch.Crc32C = (uint)value;
                    break;
                case (6 << 3) | 0:
                    batch.SenderLastSeq = value;
                    break;
                case (7 << 3) | 0:
                    batch.SenderUnsentBytes = value;
                    break;
                case (8 << 3) | 0:
                    batch.Stored = value != 0;
                    break;
                case (9 << 3) | 0:
                    batch.SenderAhead = value != 0;
                    break;
                default:
                    // An unknown field, or a known one with another wire type: protobuf keeps it as an unknown
                    // field, which only the generated message represents.
                    return Abandon(records);
            }
        }

        if (records is not null)
        {
            lock (LeaseGate)
            {
                Leased.Add(records);
            }

            batch.CompressedRecords = UnsafeByteOperations.UnsafeWrap(records.AsMemory(0, recordsLength));
        }

        return new ReplicationFrame { Batch = batch };
    }

    private static ReplicationFrame? Abandon(byte[]? records)
    {
        if (records is not null)
        {
            ArrayPool<byte>.Shared.Return(records);
        }

        return null;
    }

    /// <summary>A base-128 varint of at most 10 bytes (protobuf's limit).</summary>
    private static bool TryReadVarint(ref SequenceReader<byte> reader, out ulong value)
    {
        value = 0;
        for (var shift = 0; shift < 70; shift += 7)
        {
            if (!reader.TryRead(out var b))
            {
                return false;
            }

            value |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80)
            {
                return shift < 63 || b <= 1;
            }
        }

        return false;
    }
}

/// <summary>
/// The Replication service bound with <see cref="ReplicationWire.Replicate"/> instead of the generated method (whose
/// marshaller copies every batch into a new array). Grpc.AspNetCore binds the handler that overrides the abstract
/// method declared on the type carrying the attribute.
/// </summary>
[BindServiceMethod(typeof(ReplicationWire), nameof(ReplicationWire.BindService))]
internal abstract class ReplicationServiceBase
{
    public abstract Task Replicate(IAsyncStreamReader<ReplicationFrame> requests, IServerStreamWriter<ReplicationAck> responses, ServerCallContext context);
}
