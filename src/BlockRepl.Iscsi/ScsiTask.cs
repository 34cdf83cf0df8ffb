using System.Buffers;

namespace BlockRepl.Iscsi;

/// <summary>
/// The I_T nexus a command arrives on (SAM-5 4.7): the initiator port (name + ISID) and the target port.
/// Reservations, registrations and unit attentions are kept per nexus.
/// </summary>
internal sealed record ScsiNexus(string InitiatorName, ulong Isid)
{
    /// <summary>The SCSI initiator port name iSCSI defines: the initiator name, ",i,0x", the ISID in hex.</summary>
    public string InitiatorPort => $"{InitiatorName},i,0x{Isid:x12}";
}

/// <summary>What a SCSI command ends with: status, sense data and the Data-In bytes, if any.</summary>
internal sealed class ScsiResult
{
    public static readonly ScsiResult Good = new(ScsiSense.StatusGood, null, null, 0, false);

    private ScsiResult(byte status, byte[]? sense, byte[]? data, int dataLength, bool pooled)
    {
        Status = status;
        Sense = sense;
        Data = data;
        DataLength = dataLength;
        Pooled = pooled;
    }

    public byte Status { get; }

    public byte[]? Sense { get; }

    /// <summary>Data-In bytes (the first <see cref="DataLength"/> of them); the connection truncates to the EDTL.</summary>
    public byte[]? Data { get; }

    public int DataLength { get; }

    /// <summary>True when <see cref="Data"/> was rented from <see cref="ArrayPool{T}.Shared"/>.</summary>
    public bool Pooled { get; }

    public static ScsiResult Check(byte key, ushort ascq, ulong? information = null) =>
        new(ScsiSense.StatusCheckCondition, ScsiSense.Fixed(key, ascq, information), null, 0, false);

    public static ScsiResult WithStatus(byte status) => new(status, null, null, 0, false);

    public static ScsiResult WithData(byte[] data, int length, bool pooled = false) =>
        new(ScsiSense.StatusGood, null, data, length, pooled);

    /// <summary>Returns pooled Data-In bytes once they are sent.</summary>
    public void Release()
    {
        if (Pooled && Data is not null)
        {
            ArrayPool<byte>.Shared.Return(Data);
        }
    }
}
