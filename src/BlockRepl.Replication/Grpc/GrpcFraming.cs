using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using Google.Protobuf;

namespace BlockRepl.Replication.Grpc;

/// <summary>
/// The message framing of gRPC over HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md, "Length-Prefixed-Message"):
/// <code>
///   Length-Prefixed-Message -> Compressed-Flag Message-Length Message
///   Compressed-Flag         -> 0 / 1    # 1 byte unsigned integer
///   Message-Length          -> {length of Message}  # 4 byte unsigned integer, big-endian
///   Message                 -> *{binary octet}
/// </code>
/// This layer never compresses (it sends no grpc-encoding), so a message flagged compressed is refused.
/// </summary>
internal static class GrpcFraming
{
    public const int HeaderSize = 5;

    /// <summary>
    /// Takes one complete message off the front of <paramref name="buffer"/>. Returns false when the buffer
    /// holds only part of one. The length prefix is checked against <paramref name="maxMessageSize"/> as soon
    /// as its 5 bytes are there, before any of the message body is waited for or buffered.
    /// </summary>
    /// <exception cref="RpcException">RESOURCE_EXHAUSTED for a too-large message, UNIMPLEMENTED for a compressed
    /// one, INTERNAL for an invalid flag.</exception>
    public static bool TryReadMessage(ref ReadOnlySequence<byte> buffer, int maxMessageSize, out ReadOnlySequence<byte> message)
    {
        message = default;
        if (buffer.Length < HeaderSize)
        {
            return false;
        }

        Span<byte> header = stackalloc byte[HeaderSize];
        buffer.Slice(0, HeaderSize).CopyTo(header);
        switch (header[0])
        {
            case 0:
                break;
            case 1:
                throw new RpcException(StatusCode.Unimplemented, "Compressed messages are not supported (no grpc-encoding is negotiated).");
            default:
                throw new RpcException(StatusCode.Internal, $"Invalid compressed flag {header[0]} in message prefix.");
        }

        var length = BinaryPrimitives.ReadUInt32BigEndian(header[1..]);
        if (length > (uint)maxMessageSize)
        {
            throw new RpcException(
                StatusCode.ResourceExhausted,
                $"Received message exceeds the maximum configured message size ({length} > {maxMessageSize} bytes).");
        }

        if (buffer.Length - HeaderSize < length)
        {
            return false;
        }

        message = buffer.Slice(HeaderSize, length);
        buffer = buffer.Slice(message.End);
        return true;
    }

    /// <summary>
    /// Reads the next message from <paramref name="reader"/>; null at a clean end of the stream.
    /// Loops ReadAsync -> TryReadMessage -> AdvanceTo(consumed, examined), so an incomplete message is
    /// marked examined and the next read waits for more bytes instead of spinning.
    /// </summary>
    public static async ValueTask<T?> ReadMessageAsync<T>(
        PipeReader reader, MessageParser<T> parser, int maxMessageSize, CancellationToken cancellationToken)
        where T : class, IMessage<T>
    {
        while (true)
        {
            var result = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            if (result.IsCanceled)
            {
                throw new OperationCanceledException("The read was canceled.");
            }

            var buffer = result.Buffer;
            ReadOnlySequence<byte> payload;
            try
            {
                if (TryReadMessage(ref buffer, maxMessageSize, out payload))
                {
                    T message;
                    try
                    {
                        message = parser.ParseFrom(payload);
                    }
                    catch (InvalidProtocolBufferException ex)
                    {
                        throw new RpcException(new Status(StatusCode.Internal, "Failed to deserialize message: " + ex.Message), ex);
                    }

                    reader.AdvanceTo(buffer.Start);
                    return message;
                }
            }
            catch (RpcException)
            {
                // Nothing of a refused message is kept: release what was read before giving up.
                reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                throw;
            }

            if (result.IsCompleted)
            {
                reader.AdvanceTo(buffer.End);
                if (!buffer.IsEmpty)
                {
                    throw new RpcException(StatusCode.Internal, $"Incomplete message: the stream ended {buffer.Length} bytes into a message.");
                }

                return null;
            }

            reader.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    /// <summary>Writes <paramref name="message"/> (whose size is <paramref name="size"/>) with its 5-byte prefix.</summary>
    public static void WriteMessage(IBufferWriter<byte> writer, IMessage message, int size)
    {
        var header = writer.GetSpan(HeaderSize);
        header[0] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(header[1..], (uint)size);
        writer.Advance(HeaderSize);
        if (size > 0)
        {
            message.WriteTo(writer);
        }
    }

    /// <summary>Writes the prefix and message into <paramref name="destination"/>, which holds exactly HeaderSize + size bytes.</summary>
    public static void WriteMessage(Span<byte> destination, IMessage message, int size)
    {
        destination[0] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(destination[1..], (uint)size);
        message.WriteTo(destination.Slice(HeaderSize, size));
    }

    /// <summary>Throws RESOURCE_EXHAUSTED when a message to send is larger than the configured limit.</summary>
    public static void CheckSendSize(int size, int maxMessageSize)
    {
        if (size > maxMessageSize)
        {
            throw new RpcException(
                StatusCode.ResourceExhausted,
                $"Sending message exceeds the maximum configured message size ({size} > {maxMessageSize} bytes).");
        }
    }
}
